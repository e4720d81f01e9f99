"""Transformer cross-attention (TCA): queries from one modality, keys and values from the
other, multi-head, with residual connections, layer norm and a feed-forward block."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        # query, context: (B, L, d)
        attended, _ = self.attention(query, context, context, key_padding_mask=padding_mask, need_weights=False)
        x = self.norm1(query + attended)
        return self.norm2(x + self.feed_forward(x))


class TransformerCrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.audio_from_visual = CrossAttentionBlock(dim, heads, dropout)
        self.visual_from_audio = CrossAttentionBlock(dim, heads, dropout)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio, visual: (B, L, d)
        return (self.audio_from_visual(audio, visual, padding_mask),
                self.visual_from_audio(visual, audio, padding_mask))
