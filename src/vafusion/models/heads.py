"""Per-frame regression heads of the fusion models."""

from __future__ import annotations

import torch
from torch import nn

from vafusion.models.sequence import batch_norm_real_frames


class FrameHead(nn.Module):
    """Yu et al. (ABAW6), Sec. 3.3: "a fully connected layer, a Batch Normalization layer,
    and another fully connected layer. Finally, a tanh activation": FC -> BN -> FC -> tanh,
    per frame. The BatchNorm statistics come from the real (unpadded) frames only."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, in_dim)
        h = batch_norm_real_frames(self.bn, self.fc1(x), padding_mask)  # (B, L, hidden)
        return torch.tanh(self.fc2(h))  # (B, L, 2)


class MlpHead(nn.Module):
    """The regression MLP of the cross-attention family: FC -> ReLU -> dropout -> FC -> tanh,
    per frame (no statistics across frames)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, out_dim: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, in_dim) -> (B, L, 2)
        return torch.tanh(self.fc2(self.dropout(torch.relu(self.fc1(x)))))
