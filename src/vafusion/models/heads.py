"""Per-frame regression head shared by the fusion models."""

from __future__ import annotations

import torch
from torch import nn


class FrameHead(nn.Module):
    """Per-frame regression head: FC -> BatchNorm -> LeakyReLU -> FC -> tanh."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, in_dim)
        b, length, _ = x.shape
        h = self.fc1(x).reshape(b * length, -1)
        h = nn.functional.leaky_relu(self.bn(h))
        return torch.tanh(self.fc2(h)).reshape(b, length, -1)  # (B, L, 2)
