"""Temporal context for the per-frame features of CA and TCA, standing in for the papers'
clip backbones.

In Praveen & Alam (and the CA / JCA / RJCA papers) every feature vector x_m^l comes from a
clip (R3D over a clip of frames, ResNet-18 over the clip's spectrogram), so it already
carries temporal context. Our features are per frame (IResNet-50 of one face, VGGish /
MFCC centred on one frame). CA and TCA have no recurrent, convolutional or positional
part, so on per-frame features they would be blind to frame order: permuting a window's
frames would only permute their outputs. JCA (W_c weighs each frame position) and RJCA
(BLSTMs) do see order and get no extra context. This module gives each frame a centred
window of ``frames`` neighbours of its own modality, a residual 1-D convolution:

    x'_l = x_l + ReLU(sum_{k=-K..K} W_k x_{l+k} + b),   K = (frames - 1) / 2

Frames past either end of the trial (and padded frames) count as zeros, so a padded
window gives its real frames exactly what the unpadded trial gives them.
"""

from __future__ import annotations

import torch
from torch import nn


class ClipContext(nn.Module):
    def __init__(self, dim: int, frames: int):
        super().__init__()
        if frames < 1 or frames % 2 == 0:
            raise ValueError(f"clip context needs an odd number of frames (a centred window), got {frames}")
        self.conv = nn.Conv1d(dim, dim, kernel_size=frames, padding=frames // 2)  # W_k, b

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, d); padding_mask: (B, L), True where padded -> (B, L, d), padded frames 0
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        out = x + torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask[..., None], 0.0)
        return out
