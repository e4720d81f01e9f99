"""TCN + Transformer fusion, Yu et al. (ABAW6 valence-arousal), Sec. 3.3.

Each feature stream (Yu et al.'s: IResNet-50, VGGish, MFCC; any set of streams here) gets its own temporal convolutional network
(Bai et al.'s TCN: dilated causal 1-D convolutions with residual connections), giving
f^_1, f^_2, f^_3; then

    f = concat(f^_1, f^_2, f^_3)                                          (Eq. 1)

is projected to the model width, given sinusoidal positions, passed through a Transformer
encoder ("four encoder layers, each with a dropout rate of 0.4") and a per-frame head
FC -> BatchNorm -> FC -> tanh. The widths the paper does not give are config values.

Padding: the TCN is causal and windows are padded at their end, so no padded frame reaches
a real one; the encoder masks padded keys; the BatchNorm sees real frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from vafusion.models.heads import FrameHead


def tcn_widths(tcn_channels: dict, stream: str) -> tuple[int, ...]:
    """A stream's TCN block widths: its own entry of ``tcn_channels``, else ``default``."""
    return tuple(tcn_channels[stream] if stream in tcn_channels else tcn_channels["default"])


@dataclass(frozen=True)
class TcnTransformerConfig:
    """``learning.tcn_transformer`` of config.yaml (defaults live there only)."""

    tcn_channels: dict[str, tuple[int, ...]]  # per stream (or "default"): one block per entry, dilation 2**i
    kernel_size: int
    tcn_dropout: float
    d_model: int
    n_heads: int
    n_layers: int
    feedforward: int
    transformer_dropout: float
    head_hidden: int


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) positions of Vaswani et al.: sin on even, cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class TemporalBlock(nn.Module):
    """Bai et al.'s residual block: two weight-normalised dilated causal convolutions, each
    followed by ReLU and dropout, plus the input (1x1-convolved when the widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation  # causal: pad the past only
        self.conv1 = weight_norm(nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(out_ch, out_ch, kernel_size, dilation=dilation))
        self.dropout = nn.Dropout(dropout)
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, L)
        out = self.dropout(torch.relu(self.conv1(nn.functional.pad(x, (self.left_pad, 0)))))
        out = self.dropout(torch.relu(self.conv2(nn.functional.pad(out, (self.left_pad, 0)))))
        return torch.relu(out + self.residual(x))  # (B, C_out, L)


class TemporalConvNet(nn.Sequential):
    def __init__(self, in_ch: int, channels: tuple[int, ...], kernel_size: int, dropout: float):
        blocks = []
        for i, out_ch in enumerate(channels):
            blocks.append(TemporalBlock(in_ch, out_ch, kernel_size, 2**i, dropout))
            in_ch = out_ch
        super().__init__(*blocks)


class TcnTransformer(nn.Module):
    def __init__(self, dims: dict[str, int], cfg: TcnTransformerConfig, window: int):
        super().__init__()
        self.streams = tuple(dims)  # e.g. ("iresnet50", "vggish", "mfcc")
        widths = {name: tcn_widths(cfg.tcn_channels, name) for name in dims}
        self.tcns = nn.ModuleDict({
            name: TemporalConvNet(dim, widths[name], cfg.kernel_size, cfg.tcn_dropout) for name, dim in dims.items()
        })
        self.project = nn.Linear(sum(widths[name][-1] for name in dims), cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(window, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, dim_feedforward=cfg.feedforward,
                                           dropout=cfg.transformer_dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.head = FrameHead(cfg.d_model, cfg.head_hidden)

    def forward(self, streams: dict[str, torch.Tensor], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # streams[name]: (B, L, D_name); padding_mask: (B, L), True where the frame is padding
        encoded = [self.tcns[name](streams[name].transpose(1, 2)) for name in self.streams]  # (B, C, L) each
        f = torch.cat(encoded, dim=1).transpose(1, 2)  # Eq. 1, f = concat(f^_1, f^_2, f^_3): (B, L, sum C)
        x = self.project(f) + self.positions[: f.shape[1]]  # (B, L, d_model)
        x = self.encoder(x, src_key_padding_mask=padding_mask)  # (B, L, d_model)
        return self.head(x, padding_mask)  # (B, L, 2)
