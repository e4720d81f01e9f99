"""Inconsistency-aware two-stage gating (IACA) of Praveen & Alam.

Stage 1, per modality: a softmax over {its own (un-attended) features, its cross-attended
features}, from a linear layer on the attended features divided by a temperature T; the
output is ReLU(X G0 + X_att G1). When the other modality is weak or missing the gate can
fall back on the modality's own features.

Stage 2: a 3-way softmax gate (same temperature) over the gated audio, the gated visual and
their joint representation (concatenation -> linear).
"""

from __future__ import annotations

import torch
from torch import nn


class IacaGate(nn.Module):
    def __init__(self, dim: int, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.gate_audio = nn.Linear(dim, 2)
        self.gate_visual = nn.Linear(dim, 2)
        self.joint = nn.Linear(2 * dim, dim)
        self.gate_fusion = nn.Linear(3 * dim, 3)

    def stage1(self, own: torch.Tensor, attended: torch.Tensor, gate: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(gate(attended) / self.temperature, dim=-1)  # (B, L, 2)
        mixed = torch.relu(own * weights[..., :1] + attended * weights[..., 1:])
        return mixed, weights

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, audio_att: torch.Tensor,
                visual_att: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # all inputs: (B, L, d)
        audio_g, w_audio = self.stage1(audio, audio_att, self.gate_audio)
        visual_g, w_visual = self.stage1(visual, visual_att, self.gate_visual)
        joint = torch.relu(self.joint(torch.cat([audio_g, visual_g], dim=-1)))  # (B, L, d)
        candidates = torch.stack([audio_g, visual_g, joint], dim=-2)  # (B, L, 3, d)
        w_fusion = torch.softmax(self.gate_fusion(candidates.flatten(-2)) / self.temperature, dim=-1)  # (B, L, 3)
        fused = (candidates * w_fusion.unsqueeze(-1)).sum(dim=-2)  # (B, L, d)
        return fused, {"audio": w_audio, "visual": w_visual, "fusion": w_fusion}
