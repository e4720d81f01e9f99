"""Inconsistency-aware cross-attention (IACA) two-stage gate, Praveen & Alam, Sec. 3C,
Eq. 5-9. Frames are rows here: X_att,a^T is ``audio_att`` (B, L, d).

Stage 1, per modality m in {a, v}: choose between its own features X_m (the input of the
cross-attention) and its cross-attended features X_att,m:
    W_go,m = X_att,m^T W_gl,m              W_gl,m in R^{d x 2}, no bias      (Eq. 5)
    G_m = softmax(W_go,m / T) over the K = 2 units                           (Eq. 6)
    X_att,gm = ReLU(X_m (x) G_m0 + X_att,m (x) G_m1)                         (Eq. 7, 8)
Joint representation: X_att,gav = FC([X_att,ga; X_att,gv]) (concatenation + FC, width d).
Stage 2: an A-V gating layer with 3 units over the three candidates:
    G_av = softmax([X_att,ga; X_att,gv; X_att,gav]^T W_gl,av / T)            (Eq. 6 form)
    X_att,g = ReLU(X_att,ga (x) G_av0 + X_att,gv (x) G_av1 + X_att,gav (x) G_av2)   (Eq. 9)
The paper does not say what the A-V gating layer sees; it sees the three candidates
concatenated, and has no bias, like Eq. 5.
"""

from __future__ import annotations

import torch
from torch import nn


def _gate_weight(in_dim: int, units: int) -> nn.Parameter:
    w = nn.Parameter(torch.empty(in_dim, units))
    nn.init.xavier_uniform_(w)
    return w


class IacaGate(nn.Module):
    def __init__(self, dim: int, temperature: float):
        super().__init__()
        self.T = temperature
        self.W_gl_a = _gate_weight(dim, 2)  # Eq. 5
        self.W_gl_v = _gate_weight(dim, 2)
        self.joint = nn.Linear(2 * dim, dim)  # joint representation layer: concatenation + FC
        self.W_gl_av = _gate_weight(3 * dim, 3)  # the A-V gating layer, 3 output units

    def stage1(self, own: torch.Tensor, attended: torch.Tensor, W_gl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        G = torch.softmax(attended @ W_gl / self.T, dim=-1)  # Eq. 5-6: (B, L, 2)
        gated = torch.relu(own * G[..., 0:1] + attended * G[..., 1:2])  # Eq. 7-8: (B, L, d)
        return gated, G

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, audio_att: torch.Tensor,
                visual_att: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # audio = X_a^T, visual = X_v^T (the cross-attention's input), *_att = X_att,m^T: (B, L, d)
        gated_a, G_a = self.stage1(audio, audio_att, self.W_gl_a)  # X_att,ga
        gated_v, G_v = self.stage1(visual, visual_att, self.W_gl_v)  # X_att,gv
        gated_av = self.joint(torch.cat([gated_a, gated_v], dim=-1))  # X_att,gav: (B, L, d)
        candidates = torch.cat([gated_a, gated_v, gated_av], dim=-1)  # (B, L, 3d)
        G_av = torch.softmax(candidates @ self.W_gl_av / self.T, dim=-1)  # (B, L, 3)
        fused = torch.relu(gated_a * G_av[..., 0:1] + gated_v * G_av[..., 1:2] + gated_av * G_av[..., 2:3])  # Eq. 9
        return fused, {"audio": G_a, "visual": G_v, "fusion": G_av}
