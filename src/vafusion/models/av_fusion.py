"""The frame shared by the cross-attention family (CA, JCA, RJCA, TCA), with or without the
IACA gate: the audio streams (e.g. VGGish + MFCC) and the visual streams (e.g. IResNet-50)
of the run's stream set are concatenated per modality and projected to a common width d, for CA and TCA given the temporal context of a clip
(``clip_context``; JCA and RJCA see frame order themselves), cross-attended, fused (concatenation, or the IACA two-stage
gate), for RJCA passed through the joint BLSTM, and mapped per frame to valence and arousal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vafusion.models.clip_context import ClipContext
from vafusion.models.cross_attention import CrossAttention
from vafusion.models.heads import MlpHead
from vafusion.models.iaca import IacaGate
from vafusion.models.joint_cross_attention import JointCrossAttention
from vafusion.models.recursive_joint_cross_attention import RecursiveJointCrossAttention
from vafusion.models.sequence import BiLstm
from vafusion.models.transformer_cross_attention import TransformerCrossAttention


@dataclass(frozen=True)
class AvFusionConfig:
    """``learning.cross_attention`` of config.yaml (defaults live there only)."""

    dim: int  # d: width of both modalities after their projection
    jca_hidden: int  # k: rows of H_a, H_v in JCA / RJCA
    rjca_iterations: int  # T: recursions of RJCA
    rjca_lstm_layers: int  # layers of each of RJCA's BLSTMs
    rjca_fused_lstm: int  # width of RJCA's BLSTM over the fused representation
    tca_heads: int
    iaca_temperature: float  # T of IACA's stage-1 gates (per modality)
    iaca_temperature_av: float  # T of IACA's stage-2 (A-V) gate
    clip_frames: int  # CA / TCA: frames of temporal context per feature (1: none)
    dropout: float
    head_hidden: int


def build_attention(kind: str, cfg: AvFusionConfig, window: int) -> nn.Module:
    if kind == "ca":
        return CrossAttention(cfg.dim)
    if kind == "jca":
        return JointCrossAttention(cfg.dim, cfg.dim, cfg.jca_hidden, window)
    if kind == "rjca":
        return RecursiveJointCrossAttention(cfg.dim, cfg.jca_hidden, window, cfg.rjca_iterations, cfg.rjca_lstm_layers)
    if kind == "tca":
        return TransformerCrossAttention(cfg.dim, cfg.tca_heads, cfg.dropout)
    raise ValueError(f"unknown attention '{kind}'")


class AudioVisualFusion(nn.Module):
    def __init__(self, dims: dict[str, int], streams: dict[str, list[str]], attention: str, iaca: bool,
                 cfg: AvFusionConfig, window: int):
        super().__init__()
        self.audio_streams, self.visual_streams = tuple(streams["audio"]), tuple(streams["visual"])
        audio_dim = sum(dims[s] for s in self.audio_streams)
        visual_dim = sum(dims[s] for s in self.visual_streams)
        # Our features are not the papers' (167-d audio, 512-d face embedding): one linear
        # projection per modality brings its streams, concatenated, to d, as the reference
        # code's encoders do. Concatenate-then-project, not project-each-then-combine: the
        # papers fuse one feature vector per modality, and a linear map of the concatenation
        # is the sum of per-stream linear maps (as expressive, with fewer parts to tune).
        self.project_audio = nn.Sequential(nn.Linear(audio_dim, cfg.dim), nn.Dropout(cfg.dropout))
        self.project_visual = nn.Sequential(nn.Linear(visual_dim, cfg.dim), nn.Dropout(cfg.dropout))
        # per-frame features have no temporal context, the papers' clip features do: CA and TCA
        # (order-blind otherwise) get a clip's worth of neighbours per modality
        context = attention in ("ca", "tca") and cfg.clip_frames > 1
        self.context_audio = ClipContext(cfg.dim, cfg.clip_frames) if context else None
        self.context_visual = ClipContext(cfg.dim, cfg.clip_frames) if context else None
        self.attention = build_attention(attention, cfg, window)
        self.gate = IacaGate(cfg.dim, cfg.iaca_temperature, cfg.iaca_temperature_av) if iaca else None
        fused_dim = cfg.dim if iaca else 2 * cfg.dim
        self.fused_lstm = BiLstm(fused_dim, cfg.rjca_fused_lstm, cfg.rjca_lstm_layers) if attention == "rjca" else None
        head_in = cfg.rjca_fused_lstm if attention == "rjca" else fused_dim
        self.head = MlpHead(head_in, cfg.head_hidden, cfg.dropout)

    def forward(self, streams: dict[str, torch.Tensor], padding_mask: torch.Tensor | None = None,
                return_gates: bool = False):
        # streams[name]: (B, L, D_name); padding_mask: (B, L), True where the frame is padding
        audio = self.project_audio(torch.cat([streams[s] for s in self.audio_streams], dim=-1))  # X_a^T: (B, L, d)
        visual = self.project_visual(torch.cat([streams[s] for s in self.visual_streams], dim=-1))  # X_v^T: (B, L, d)
        if self.context_audio is not None:  # CA, TCA: clip context, still (B, L, d)
            audio, visual = self.context_audio(audio, padding_mask), self.context_visual(visual, padding_mask)
        if isinstance(self.attention, RecursiveJointCrossAttention):
            # RJCA attends over its BLSTMs' outputs: those are its X_a, X_v (IACA's "own" features)
            audio, visual = self.attention.encode(audio, visual, padding_mask)
            audio_att, visual_att = self.attention.attend(audio, visual, padding_mask)
        else:
            audio_att, visual_att = self.attention(audio, visual, padding_mask)  # (B, L, d) each
        gates: dict[str, torch.Tensor] = {}
        if self.gate is None:
            fused = torch.cat([audio_att, visual_att], dim=-1)  # (B, L, 2d)
        else:
            fused, gates = self.gate(audio, visual, audio_att, visual_att)  # X_att,g: (B, L, d)
        if self.fused_lstm is not None:
            fused = self.fused_lstm(fused, padding_mask)  # RJCA's BLSTM on the joint representation
        out = self.head(fused)  # (B, L, 2)
        return (out, gates) if return_gates else out
