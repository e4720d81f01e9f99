"""Recursive joint cross-attention (RJCA) of Praveen et al.: a BiLSTM per modality for
temporal context, then joint cross-attention applied recursively, the output of one
iteration feeding the next (shared weights)."""

from __future__ import annotations

import torch
from torch import nn

from vafusion.models.joint_cross_attention import JointCrossAttention


class RecursiveJointCrossAttention(nn.Module):
    def __init__(self, dim: int, iterations: int = 2):
        super().__init__()
        self.lstm_audio = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
        self.lstm_visual = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
        self.jca = JointCrossAttention(dim)
        self.iterations = iterations

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio, visual: (B, L, d)
        audio, _ = self.lstm_audio(audio)  # (B, L, d)
        visual, _ = self.lstm_visual(visual)  # (B, L, d)
        for _ in range(self.iterations):
            audio, visual = self.jca(audio, visual, padding_mask)
        return audio, visual
