"""Joint cross-attention (JCA), Praveen, Cardinal & Granger (IEEE T-BIOM 2023; CVPRW 2022),
the JCA baseline of Praveen & Alam (IACA). Each modality attends against the joint
audio-visual representation, which brings intra- and inter-modal relations together.

Columns are frames in the paper (X_a in R^{d_a x L}); here rows are frames, (B, L, d).

    J = [X_a; X_v]                                  (d = d_a + d_v rows)
    C_a = tanh(X_a^T W_ja J / sqrt(d)),  C_v = tanh(X_v^T W_jv J / sqrt(d))     (L x L)
    H_a = ReLU(W_a X_a + W_ca C_a^T),    H_v = ReLU(W_v X_v + W_cv C_v^T)       (k x L)
    X_att,a = W_ha H_a + X_a,            X_att,v = W_hv H_v + X_v              (d_m x L)

W_ca, W_cv in R^{k x L} weigh the L frames of the window, so a JCA layer is built for one
window length L. The columns of C for padded frames are set to 0, so padding never reaches
a real frame (that equals dropping those columns of W_c).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _weight(rows: int, cols: int) -> nn.Parameter:
    w = nn.Parameter(torch.empty(rows, cols))
    nn.init.xavier_uniform_(w)
    return w


class JointCrossAttention(nn.Module):
    def __init__(self, audio_dim: int, visual_dim: int, hidden: int, length: int):
        super().__init__()
        joint = audio_dim + visual_dim
        self.scale = 1.0 / math.sqrt(joint)  # 1 / sqrt(d)
        self.W_ja, self.W_jv = _weight(audio_dim, joint), _weight(visual_dim, joint)
        self.W_a, self.W_v = _weight(hidden, audio_dim), _weight(hidden, visual_dim)
        self.W_ca, self.W_cv = _weight(hidden, length), _weight(hidden, length)
        self.W_ha, self.W_hv = _weight(audio_dim, hidden), _weight(visual_dim, hidden)
        self.length = length

    def attend(self, x: torch.Tensor, joint: torch.Tensor, W_j: torch.Tensor, W: torch.Tensor, W_c: torch.Tensor,
               W_h: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        # x = X_m^T: (B, L, d_m); joint = J^T: (B, L, d)
        C = torch.tanh(x @ W_j @ joint.transpose(1, 2) * self.scale)  # C_m: (B, L, L)
        if padding_mask is not None:
            C = C.masked_fill(padding_mask[:, None, :], 0.0)  # padded joint frames weigh nothing
        H = torch.relu(x @ W.T + C @ W_c.T)  # H_m^T = (W_m X_m + W_cm C_m^T)^T: (B, L, k)
        return H @ W_h.T + x  # X_att,m^T = (W_hm H_m + X_m)^T: (B, L, d_m)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio: (B, L, d_a), visual: (B, L, d_v), L = self.length
        if audio.shape[1] != self.length:
            raise ValueError(f"JCA was built for windows of {self.length} frames, got {audio.shape[1]}")
        joint = torch.cat([audio, visual], dim=-1)  # J^T: (B, L, d)
        audio_att = self.attend(audio, joint, self.W_ja, self.W_a, self.W_ca, self.W_ha, padding_mask)
        visual_att = self.attend(visual, joint, self.W_jv, self.W_v, self.W_cv, self.W_hv, padding_mask)
        return audio_att, visual_att
