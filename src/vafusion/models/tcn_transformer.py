"""TCN + Transformer fusion (after Yu et al., ABAW6 valence-arousal entry).

Each feature stream (IResNet-50, VGGish, MFCC) gets its own temporal convolutional network
(dilated causal 1-D convolutions with residual connections); the streams are concatenated,
projected to the model width, passed through a Transformer encoder for long-range context,
and a per-frame head (FC -> BatchNorm -> LeakyReLU -> FC -> tanh) gives valence and arousal.

The paper does not publish every width; ours are config values (defaults in
``TcnTransformerConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vafusion.models.heads import FrameHead


@dataclass(frozen=True)
class TcnTransformerConfig:
    tcn_channels: tuple[int, ...] = (64, 64, 64)  # one block per entry, dilation 2**i
    kernel_size: int = 3
    tcn_dropout: float = 0.1
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    transformer_dropout: float = 0.4
    head_hidden: int = 64


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions with a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation  # causal: pad the past only
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, dilation=dilation)
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
    def __init__(self, dims: dict[str, int], cfg: TcnTransformerConfig = TcnTransformerConfig()):
        super().__init__()
        self.streams = tuple(dims)  # e.g. ("iresnet50", "vggish", "mfcc")
        self.tcns = nn.ModuleDict({
            name: TemporalConvNet(dim, cfg.tcn_channels, cfg.kernel_size, cfg.tcn_dropout)
            for name, dim in dims.items()
        })
        self.project = nn.Linear(cfg.tcn_channels[-1] * len(dims), cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.transformer_dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.head = FrameHead(cfg.d_model, cfg.head_hidden)

    def forward(self, streams: dict[str, torch.Tensor], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # streams[name]: (B, L, D_name); padding_mask: (B, L), True where the frame is padding
        encoded = [self.tcns[name](streams[name].transpose(1, 2)) for name in self.streams]  # (B, C, L) each
        x = self.project(torch.cat(encoded, dim=1).transpose(1, 2))  # (B, L, d_model)
        x = self.encoder(x, src_key_padding_mask=padding_mask)  # (B, L, d_model)
        return self.head(x)  # (B, L, 2)
