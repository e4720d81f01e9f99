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


def build_fusion_model(name: str, dims: dict[str, int], hparams: dict, window: int,
                       streams: dict[str, list[str]]) -> nn.Module:
    """A fusion model by name, from its config section, the training window length (JCA's
    W_c and the Transformer's positions are built for it) and the streams it fuses per
    modality (``streams``: {"audio": [...], "visual": [...]}; ``dims``: each stream's width)."""
    from vafusion.models.av_fusion import AudioVisualFusion, AvFusionConfig
    from vafusion.models.tcn_transformer import TcnTransformer, TcnTransformerConfig

    if name == "tcn_transformer":
        ordered = streams["visual"] + streams["audio"]
        return TcnTransformer({s: dims[s] for s in ordered}, _pick(TcnTransformerConfig, hparams), window)
    if name in FUSION_MODELS:
        attention, _, gate = name.partition("_")
        return AudioVisualFusion(dims, streams, attention, iaca=gate == "iaca", cfg=_pick(AvFusionConfig, hparams),
                                 window=window)
    raise ValueError(f"unknown model '{name}'; known: {', '.join(FUSION_MODELS)}")


def settings_problems(learning: dict) -> list[str]:
    """What in ``learning`` (config.yaml) passes the schema but cannot build a configured
    model, each naming the key and the rule it breaks; checked when the workflow is parsed,
    before any job runs (plain arithmetic: no torch import in every job's parse)."""
    models = [run.partition("@")[0] for run in learning["models"]]  # fusion models of <model>@<stream set> runs
    tcn, ca = learning["tcn_transformer"], learning["cross_attention"]
    problems = []
    if "tcn_transformer" in models and tcn["d_model"] % tcn["n_heads"]:
        problems.append(f"learning.tcn_transformer.n_heads: {tcn['n_heads']} does not divide d_model "
                        f"{tcn['d_model']} (the Transformer's heads split d_model; rule train_model)")
    if any(m.startswith("tca") for m in models) and ca["dim"] % ca["tca_heads"]:
        problems.append(f"learning.cross_attention.tca_heads: {ca['tca_heads']} does not divide dim {ca['dim']} "
                        "(the transformer cross-attention's heads split dim; rule train_model)")
    train = learning["train"]
    if train["hop"] > train["window"]:
        problems.append(f"learning.train.hop: {train['hop']} is longer than window {train['window']}: the frames "
                        "between windows would never be trained on (rule train_model)")
    return problems
