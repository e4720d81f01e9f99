"""Cross-attention (CA) of Praveen et al.: audio and visual features attend to each other
through their cross-correlation matrix.

With Xa, Xv of shape (d, L) (one column per frame), C = Xa^T W Xv / sqrt(d) is an L x L
cross-correlation; its column-wise softmax gives the attention of each modality on the
other, and the attended features are tanh(X + X A).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def attend(x: torch.Tensor, correlation: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(X + X A) with A the column-wise softmax of ``correlation``.

    x: (B, L, d) frames as rows; correlation: (B, L, L) rows index x's frames.
    In (d, L) notation X A sums x's frames weighted by each column of A.
    padding_mask: (B, L), True for padded frames, which get no attention.
    """
    if padding_mask is not None:
        correlation = correlation.masked_fill(padding_mask[:, :, None], float("-inf"))
    weights = torch.softmax(correlation, dim=1)  # each column sums to 1 over x's frames
    return torch.tanh(x + weights.transpose(1, 2) @ x)


class CrossAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio, visual: (B, L, d)
        correlation = audio @ self.weight @ visual.transpose(1, 2) * self.scale  # (B, L_a, L_v)
        audio_att = attend(audio, correlation, padding_mask)  # (B, L, d)
        visual_att = attend(visual, correlation.transpose(1, 2), padding_mask)  # (B, L, d)
        return audio_att, visual_att
