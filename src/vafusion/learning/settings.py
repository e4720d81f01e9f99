"""One training's settings: ``learning.train`` of config.yaml (its defaults live there and in
the schema only) plus the job's seed, and the seed of the random streams a (seed, fold)
training draws from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SELECTIONS = ("inner", "validation")
# the missing-audio test's patterns (vafusion.learning.missing_audio)
MISSING_AUDIO_PATTERNS = ("contiguous", "scattered", "unvoiced")


@dataclass(frozen=True)
class Voice:
    """Which frames are unvoiced: those where the 1-d ``stream`` (speech presence: ``speech``
    or ``mouth_open``) is below ``threshold``."""

    stream: str
    threshold: float

    @classmethod
    def of(cls, values) -> "Voice | None":
        if values is None or isinstance(values, Voice):
            return values
        return None if values.get("stream") is None else cls(str(values["stream"]), float(values["threshold"]))


@dataclass(frozen=True)
class MissingAudio:
    """Praveen & Alam's missing-audio test: a share of the audio frames dropped, i.e. given
    the ``fill`` rows (``vafusion.features.silence``: "zeros" as the paper, or "silence").
    ``voice``: what the ``unvoiced`` pattern drops (``vafusion.learning.missing_audio``)."""

    shares: tuple[float, ...]
    patterns: tuple[str, ...]  # "contiguous" (one segment per trial), "scattered" frames, "unvoiced"
    fill: str
    voice: Voice | None = None


@dataclass(frozen=True)
class TrainConfig:
    """``learning.train`` of config.yaml plus the job's seed, one of ``learning.seeds``."""

    window: int  # frames per training window
    hop: int  # frames between window starts (the last window ends flush)
    batch_size: int
    optimizer: str  # "adam" or "adamw"
    lr: float
    weight_decay: float
    max_epochs: int
    warmup_epochs: int
    patience: int
    selection: str  # which trials pick the epoch: "inner" (held-out training groups) or "validation"
    inner_share: float  # share of the training groups held out for selection with "inner"
    refit: bool  # with "inner": retrain on all training trials for the chosen epoch count, keep that model
    seed: int  # with the fold: initialisation and window order; alone: the inner split's and missing audio's draws
    precision: str  # training forward: "auto" (bf16 autocast on CUDA), "bfloat16" (any device) or "float32"
    missing_audio: MissingAudio
    # unvoiced frames' audio is the missing-audio fill in training and in every prediction
    # (the ABAW10 winner's audio "only where the mouth is open"); None: off
    unvoiced_audio: Voice | None = None

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"learning.train.selection must be one of {', '.join(SELECTIONS)}, not {self.selection!r}")

    @classmethod
    def from_dict(cls, values: dict, seed: int | None = None) -> "TrainConfig":
        """From ``learning.train`` and the job's ``seed`` (config.yaml has a list of seeds,
        not one), or from a saved model.pt's ``train_config``, which holds its seed. A
        model.pt saved before refitting existed never refitted."""
        values = {"refit": False, **values}
        values["unvoiced_audio"] = Voice.of(values.get("unvoiced_audio"))  # a model.pt before it: off
        saved_seed = values.pop("seed", None)
        if seed is None and saved_seed is None:
            raise ValueError("TrainConfig needs a seed: pass seed= (one of learning.seeds); learning.train has none")
        if seed is not None and saved_seed is not None and seed != saved_seed:
            raise ValueError(f"TrainConfig: seed={seed} contradicts the settings' own seed {saved_seed}")
        missing = values.pop("missing_audio")
        if not isinstance(missing, MissingAudio):
            missing = MissingAudio(tuple(missing["shares"]), tuple(missing["patterns"]), missing["fill"],
                                   Voice.of(missing.get("voice")))
        return cls(**values, seed=int(saved_seed if seed is None else seed), missing_audio=missing)


def training_seed(seed: int, fold: int) -> int:
    """The seed of one training's initialisation and window order, from (seed, fold): every
    fold of a seed starts from its own weights, so the spread over folds includes the
    initialisation's (one seed for all folds gave every fold the same starting weights)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
