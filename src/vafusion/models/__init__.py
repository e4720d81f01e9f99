"""Neural network architectures, one per module (torchvision style), and the registry of
fusion models the learning stage can train by name."""

from __future__ import annotations

from dataclasses import fields

from torch import nn

FUSION_MODELS = ("tcn_transformer", "ca", "jca", "rjca", "tca", "ca_iaca", "jca_iaca", "rjca_iaca", "tca_iaca")


def _pick(config_cls, hparams: dict):
    """The dataclass from the config section ``hparams`` (keys of other uses, such as
    ``smoothing``, are ignored; a missing key is an error)."""
    names = {f.name for f in fields(config_cls)}
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items() if k in names})


def config_section(name: str) -> str:
    """The ``learning`` section of config.yaml that holds a model's settings."""
    return "tcn_transformer" if name == "tcn_transformer" else "cross_attention"


def build_fusion_model(name: str, dims: dict[str, int], hparams: dict, window: int) -> nn.Module:
    """A fusion model by name, from its config section and the training window length
    (JCA's W_c and the Transformer's positions are built for it)."""
    from vafusion.models.av_fusion import AudioVisualFusion, AvFusionConfig
    from vafusion.models.tcn_transformer import TcnTransformer, TcnTransformerConfig

    if name == "tcn_transformer":
        return TcnTransformer(dims, _pick(TcnTransformerConfig, hparams), window)
    if name in FUSION_MODELS:
        attention, _, gate = name.partition("_")
        return AudioVisualFusion(dims, attention, iaca=gate == "iaca", cfg=_pick(AvFusionConfig, hparams),
                                 window=window)
    raise ValueError(f"unknown model '{name}'; known: {', '.join(FUSION_MODELS)}")
