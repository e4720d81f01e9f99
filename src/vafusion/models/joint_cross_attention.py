"""Joint cross-attention (JCA) of Praveen et al.: each modality attends against the joint
audio-visual representation J = [Xa; Xv] instead of the other modality alone.

C_m = Xm^T W_m J / sqrt(d) (L x L), then, as in CA, tanh(Xm + Xm A_m) with A_m the
column-wise softmax of C_m.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vafusion.models.cross_attention import attend


class JointCrossAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight_audio = nn.Parameter(torch.empty(dim, 2 * dim))
        self.weight_visual = nn.Parameter(torch.empty(dim, 2 * dim))
        for w in (self.weight_audio, self.weight_visual):
            nn.init.xavier_uniform_(w)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio, visual: (B, L, d)
        joint = torch.cat([audio, visual], dim=-1)  # (B, L, 2d)
        corr_audio = audio @ self.weight_audio @ joint.transpose(1, 2) * self.scale  # (B, L, L)
        corr_visual = visual @ self.weight_visual @ joint.transpose(1, 2) * self.scale  # (B, L, L)
        return attend(audio, corr_audio, padding_mask), attend(visual, corr_visual, padding_mask)
