"""The frame shared by the cross-attention family (CA, JCA, RJCA, TCA), with or without the
IACA gate: the audio stream (VGGish + MFCC) and the visual stream (IResNet-50) are projected
to a common width, cross-attended, fused (concatenation, or the IACA two-stage gate) and
mapped per frame to valence and arousal."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vafusion.models.cross_attention import CrossAttention
from vafusion.models.heads import FrameHead
from vafusion.models.iaca import IacaGate
from vafusion.models.joint_cross_attention import JointCrossAttention
from vafusion.models.recursive_joint_cross_attention import RecursiveJointCrossAttention
from vafusion.models.transformer_cross_attention import TransformerCrossAttention

AUDIO_STREAMS = ("vggish", "mfcc")
VISUAL_STREAMS = ("iresnet50",)


@dataclass(frozen=True)
class AvFusionConfig:
    dim: int = 128
    dropout: float = 0.2
    head_hidden: int = 64
    rjca_iterations: int = 2
    tca_heads: int = 4
    iaca_temperature: float = 0.1


def build_attention(kind: str, cfg: AvFusionConfig) -> nn.Module:
    if kind == "ca":
        return CrossAttention(cfg.dim)
    if kind == "jca":
        return JointCrossAttention(cfg.dim)
    if kind == "rjca":
        return RecursiveJointCrossAttention(cfg.dim, cfg.rjca_iterations)
    if kind == "tca":
        return TransformerCrossAttention(cfg.dim, cfg.tca_heads, cfg.dropout)
    raise ValueError(f"unknown attention '{kind}'")


class AudioVisualFusion(nn.Module):
    def __init__(self, dims: dict[str, int], attention: str, iaca: bool, cfg: AvFusionConfig = AvFusionConfig()):
        super().__init__()
        audio_dim = sum(dims[s] for s in AUDIO_STREAMS)
        visual_dim = sum(dims[s] for s in VISUAL_STREAMS)
        self.project_audio = nn.Sequential(nn.Linear(audio_dim, cfg.dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.project_visual = nn.Sequential(nn.Linear(visual_dim, cfg.dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.attention = build_attention(attention, cfg)
        self.gate = IacaGate(cfg.dim, cfg.iaca_temperature) if iaca else None
        self.head = FrameHead(cfg.dim if iaca else 2 * cfg.dim, cfg.head_hidden)

    def forward(self, streams: dict[str, torch.Tensor], padding_mask: torch.Tensor | None = None,
                return_gates: bool = False):
        # streams[name]: (B, L, D_name); padding_mask: (B, L), True where the frame is padding
        audio = self.project_audio(torch.cat([streams[s] for s in AUDIO_STREAMS], dim=-1))  # (B, L, d)
        visual = self.project_visual(torch.cat([streams[s] for s in VISUAL_STREAMS], dim=-1))  # (B, L, d)
        audio_att, visual_att = self.attention(audio, visual, padding_mask)  # (B, L, d) each
        gates: dict[str, torch.Tensor] = {}
        if self.gate is None:
            fused = torch.cat([audio_att, visual_att], dim=-1)  # (B, L, 2d)
        else:
            fused, gates = self.gate(audio, visual, audio_att, visual_att)  # (B, L, d)
        out = self.head(fused)  # (B, L, 2)
        return (out, gates) if return_gates else out
