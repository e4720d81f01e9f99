"""Neural network architectures, one per module (torchvision style), and the registry of
fusion models the learning stage can train by name."""

from __future__ import annotations

from dataclasses import fields

from torch import nn

FUSION_MODELS = ("tcn_transformer", "ca", "jca", "rjca", "tca", "ca_iaca", "jca_iaca", "rjca_iaca", "tca_iaca")


def _pick(config_cls, hparams: dict):
    names = {f.name for f in fields(config_cls)}
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items() if k in names})


def build_fusion_model(name: str, dims: dict[str, int], hparams: dict | None = None) -> nn.Module:
    """A fusion model by name; ``hparams`` may hold any model's settings (unused ones ignored)."""
    from vafusion.models.av_fusion import AudioVisualFusion, AvFusionConfig
    from vafusion.models.tcn_transformer import TcnTransformer, TcnTransformerConfig

    hparams = hparams or {}
    if name == "tcn_transformer":
        return TcnTransformer(dims, _pick(TcnTransformerConfig, hparams))
    if name in FUSION_MODELS:
        attention, _, gate = name.partition("_")
        return AudioVisualFusion(dims, attention, iaca=gate == "iaca", cfg=_pick(AvFusionConfig, hparams))
    raise ValueError(f"unknown model '{name}'; known: {', '.join(FUSION_MODELS)}")
