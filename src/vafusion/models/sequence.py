"""Sequence helpers shared by the fusion models: windows are padded at their end only
(see ``vafusion.learning.data.make_batch``), and no padded frame may change a real one."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def real_lengths(padding_mask: torch.Tensor) -> torch.Tensor:
    """(B,) number of real frames per window; padding must be a suffix of each window."""
    lengths = (~padding_mask).sum(dim=1)
    positions = torch.arange(padding_mask.shape[1], device=padding_mask.device)
    if not torch.equal(padding_mask, positions[None, :] >= lengths[:, None]):
        raise ValueError("padding must sit at the end of each window")
    return lengths


class BiLstm(nn.Module):
    """A bidirectional LSTM (hidden ``out_dim // 2`` per direction) that runs over the real
    frames of each window only (packed), so the backward direction starts at the last real
    frame instead of carrying the padding into every frame."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"a BiLSTM's output width must be even (two directions), got {out_dim}")
        self.lstm = nn.LSTM(in_dim, out_dim // 2, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, in_dim) -> (B, L, out_dim); padded frames come out as 0
        if padding_mask is None or not padding_mask.any():
            return self.lstm(x)[0]
        lengths = real_lengths(padding_mask).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        return out


def batch_norm_real_frames(norm: nn.BatchNorm1d, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over frames: statistics (in training) from the real frames only; padded
    frames come out as 0. x: (B, L, C)."""
    if padding_mask is None:
        return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    real = ~padding_mask
    out = x.new_zeros(x.shape)
    out[real] = norm(x[real])
    return out
