"""Inconsistency-aware cross-attention (IACA) two-stage gate, Praveen & Alam, Sec. 3C,
Eq. 5-9. Frames are rows here: X_att,a^T is ``audio_att`` (B, L, d).

Stage 1, per modality m in {a, v}: choose between its own features X_m (the input of the
cross-attention; the paper's text calls them "self-attended", its Eq. 7-8 write X_m, which
is what is gated here) and its cross-attended features X_att,m:
    W_go,m = X^_att,m^T W_gl,m             W_gl,m in R^{d x 2}, no bias      (Eq. 5)
    G_m = softmax(W_go,m / T) over the K = 2 units                           (Eq. 6)
    X_att,gm = ReLU(X_m (x) G_m0 + X_att,m (x) G_m1)                         (Eq. 7, 8)
Joint representation: X_att,gav = FC([X_att,ga; X_att,gv]) (concatenation + FC, width d).
Stage 2: an A-V gating layer with 3 units over the three candidates:
    G_av = softmax([X^_att,ga; X^_att,gv; X^_att,gav]^T W_gl,av / T_av)      (Eq. 6 form)
    X_att,g = ReLU(X_att,ga (x) G_av0 + X_att,gv (x) G_av1 + X_att,gav (x) G_av2)   (Eq. 9)

X^ is X with every frame (column) scaled to unit L2 norm: the gates read the direction of
a frame's features, not their size. T = 0.1 comes from the authors' gated-RJCA code, whose
gate reads unit-norm features (it L2-normalises its inputs and every BLSTM output); here the
gated features have norms of 1-30, which at T = 0.1 made the softmax one-hot before any
training. The features that are weighted (Eq. 7-9's right-hand sides) are not normalised.
The gate weights start at zero: every gate starts uniform (G_m = 1/2, G_av = 1/3) and the
training decides. The paper does not say what the A-V gating layer sees; it sees the three
candidates concatenated (each unit-normalised), and has no bias, like Eq. 5.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _gate_weight(in_dim: int, units: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(in_dim, units))  # a uniform gate until training moves it


def unit_frames(x: torch.Tensor) -> torch.Tensor:
    """X^: every frame's feature vector scaled to unit L2 norm (an all-zero frame stays 0)."""
    return F.normalize(x, dim=-1, eps=1e-6)


class IacaGate(nn.Module):
    def __init__(self, dim: int, temperature: float, temperature_av: float | None = None):
        super().__init__()
        self.T = temperature  # stage 1
        self.T_av = temperature if temperature_av is None else temperature_av  # stage 2
        self.W_gl_a = _gate_weight(dim, 2)  # Eq. 5
        self.W_gl_v = _gate_weight(dim, 2)
        self.joint = nn.Linear(2 * dim, dim)  # joint representation layer: concatenation + FC
        self.W_gl_av = _gate_weight(3 * dim, 3)  # the A-V gating layer, 3 output units

    def stage1(self, own: torch.Tensor, attended: torch.Tensor, W_gl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        G = torch.softmax(unit_frames(attended) @ W_gl / self.T, dim=-1)  # Eq. 5-6: (B, L, 2)
        gated = torch.relu(own * G[..., 0:1] + attended * G[..., 1:2])  # Eq. 7-8: (B, L, d)
        return gated, G

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, audio_att: torch.Tensor,
                visual_att: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # audio = X_a^T, visual = X_v^T (the cross-attention's input), *_att = X_att,m^T: (B, L, d)
        gated_a, G_a = self.stage1(audio, audio_att, self.W_gl_a)  # X_att,ga
        gated_v, G_v = self.stage1(visual, visual_att, self.W_gl_v)  # X_att,gv
        gated_av = self.joint(torch.cat([gated_a, gated_v], dim=-1))  # X_att,gav: (B, L, d)
        seen = torch.cat([unit_frames(gated_a), unit_frames(gated_v), unit_frames(gated_av)], dim=-1)  # (B, L, 3d)
        G_av = torch.softmax(seen @ self.W_gl_av / self.T_av, dim=-1)  # (B, L, 3)
        fused = torch.relu(gated_a * G_av[..., 0:1] + gated_v * G_av[..., 1:2] + gated_av * G_av[..., 2:3])  # Eq. 9
        return fused, {"audio": G_a, "visual": G_v, "fusion": G_av}
