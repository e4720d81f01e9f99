"""Training one fusion model on one fold, validating, predicting.

- Windows of ``window`` frames every ``hop`` (the last flush with the trial's end); short
  trials are padded and the padding masked.
- Loss 2 - CCC_valence - CCC_arousal over the batch's valid frames.
- Adam or AdamW (``optimizer``), linear warm-up then cosine decay of the learning rate (per epoch), early stopping
  on the mean CCC of the selection trials; bf16 autocast on CUDA; seeded and deterministic on the CPU.
- Selection (``selection``): ``inner`` holds out a seeded share of the fold's training
  groups (videos, subjects: folds.json's ``train_groups``) to pick the epoch, so the
  validation fold that the report scores chose nothing; ``validation`` picks on the scored
  fold itself (the papers' practice, optimistic). Inner training records the optimism it
  avoided, measured on its own history.
- A checkpoint after every epoch (``last.pt``) lets an interrupted training resume where
  it stopped; it is only reused when the model, settings, fold and input files are the
  same, and removed once the training has finished.
- Validation: overlapping windows averaged per frame, the model's moving-average smoothing,
  CCC per target over all valid frames of the fold's validation trials concatenated.
- Memory stays flat in the data's size: training windows are read from the aligned files
  as batches are made, validation trials are loaded one at a time
  (``vafusion.learning.data``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import pickle
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from vafusion.annotations import TARGETS
from vafusion.devices import cuda_status, resolve_device
from vafusion.features.common import prefetch
from vafusion.io import atomic_output
from vafusion.learning.ccc import ccc, ccc_loss
from vafusion.learning.data import (Normalizer, StoredTrial, TrialData, load_trial, make_batch, open_trial,
                                    stream_dims, window_starts)
from vafusion.learning.provenance import RECORD_KEY
from vafusion.learning.results import write_trial_predictions
from vafusion.features.registry import by_modality
from vafusion.learning.streams import split_run
from vafusion.models import build_fusion_model
from vafusion.weights import refused_as_unsafe, safe_load, torch_save, unsafe_global

log = logging.getLogger(__name__)
# the streams of a model.pt saved before stream sets (it records none): Yu et al.'s set
STREAMS_OF_OLDER_MODELS = {"audio": ["vggish", "mfcc"], "visual": ["iresnet50"]}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass(frozen=True)
class MissingAudio:
    """Praveen & Alam's missing-audio test: a share of the audio frames dropped, i.e. given
    the ``fill`` rows (``vafusion.features.silence``: "zeros" as the paper, or "silence")."""

    shares: tuple[float, ...]
    patterns: tuple[str, ...]  # "contiguous" (one segment per trial) and/or "scattered" frames
    fill: str


SELECTIONS = ("inner", "validation")


@dataclass(frozen=True)
class TrainConfig:
    """``learning.train`` of config.yaml (the defaults live there and in the schema only)
    plus the job's seed, one of ``learning.seeds``."""

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
    seed: int  # initialisation, window order, the inner split, the missing-audio draws
    precision: str  # training forward: "auto" (bf16 autocast on CUDA), "bfloat16" (any device) or "float32"
    missing_audio: MissingAudio

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"learning.train.selection must be one of {', '.join(SELECTIONS)}, not {self.selection!r}")

    @classmethod
    def from_dict(cls, values: dict, seed: int | None = None) -> "TrainConfig":
        """From ``learning.train`` and the job's ``seed`` (config.yaml has a list of seeds,
        not one), or from a saved model.pt's ``train_config``, which holds its seed."""
        values = dict(values)
        saved_seed = values.pop("seed", None)
        if seed is None and saved_seed is None:
            raise ValueError("TrainConfig needs a seed: pass seed= (one of learning.seeds); learning.train has none")
        if seed is not None and saved_seed is not None and seed != saved_seed:
            raise ValueError(f"TrainConfig: seed={seed} contradicts the settings' own seed {saved_seed}")
        missing = values.pop("missing_audio")
        if not isinstance(missing, MissingAudio):
            missing = MissingAudio(tuple(missing["shares"]), tuple(missing["patterns"]), missing["fill"])
        return cls(**values, seed=int(saved_seed if seed is None else seed), missing_audio=missing)


# --- prediction ------------------------------------------------------------------------------

def smooth(prediction: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average: frame t averages frames t - window//2 .. t + (window-1)//2
    that exist (fewer at the edges; a window longer than the trial averages all of it)."""
    if window <= 1:
        return prediction
    n = len(prediction)
    csum = np.concatenate([np.zeros((1, prediction.shape[1])), np.cumsum(prediction, axis=0, dtype=np.float64)])
    t = np.arange(n)
    lo = np.clip(t - window // 2, 0, n)
    hi = np.clip(t + (window - 1) // 2 + 1, 0, n)
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(prediction.dtype)


PATTERNS = ("contiguous", "scattered")


def missing_frames(trial: TrialData | StoredTrial, share: float, pattern: str, seed: int) -> np.ndarray:
    """(T,) bool: the audio frames to drop, round(share * T) of them; the same frames for
    every model (seeded by trial name, share and pattern), so models are compared on one draw."""
    n = int(round(share * trial.length))
    rng = np.random.default_rng([seed, zlib.crc32(trial.name.encode()), int(round(share * 1e6)),
                                 PATTERNS.index(pattern)])
    dropped = np.zeros(trial.length, bool)
    if n == 0:
        return dropped
    if pattern == "contiguous":
        start = int(rng.integers(0, trial.length - n + 1))
        dropped[start:start + n] = True
    else:
        dropped[rng.choice(trial.length, size=n, replace=False)] = True
    return dropped


def drop_audio(trial: TrialData, dropped: np.ndarray, fill: dict[str, np.ndarray]) -> TrialData:
    """The trial (raw, before normalisation) with the audio features of the ``dropped``
    frames replaced by the ``fill`` rows (one per audio stream: zeros at the networks'
    input, or silence)."""
    streams = dict(trial.streams)
    for s in fill:
        x = streams[s].copy()
        x[dropped] = fill[s]
        streams[s] = x
    return TrialData(trial.name, streams, trial.labels, trial.valid)


# IACA's gate weights per frame, in the paper's symbols: stage 1 G_a, G_v (0: the modality's
# own features, 1: its cross-attended ones), stage 2 G_av (audio, visual, joint).
GATE_COLUMNS = ("G_a0", "G_a1", "G_v0", "G_v1", "G_av0", "G_av1", "G_av2")


def has_gate(model: torch.nn.Module) -> bool:
    return getattr(model, "gate", None) is not None


def training_autocast(device: torch.device, precision: str):
    """The training forward's autocast: bfloat16 matmuls on CUDA with ``auto``, on any device
    (the CPU too, so CI runs the GPU's code path) with ``bfloat16``, never with ``float32``.
    Predictions and scores never run under it (``predict_trial_and_gates``)."""
    enabled = precision == "bfloat16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def predict_trial(model: torch.nn.Module, trial: TrialData, cfg: TrainConfig, device: torch.device,
                  smoothing: int = 0) -> np.ndarray:
    """(T, 2) predictions: every overlapping window's output averaged per frame, then
    smoothed over ``smoothing`` frames (0: not)."""
    return predict_trial_and_gates(model, trial, cfg, device, smoothing)[0]


@torch.inference_mode()
def predict_trial_and_gates(model: torch.nn.Module, trial: TrialData, cfg: TrainConfig, device: torch.device,
                            smoothing: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """``predict_trial``'s predictions and, for a model with an IACA gate, its (T, 7) gate
    weights (``GATE_COLUMNS``) averaged per frame over the windows like the predictions,
    not smoothed; None for a model without gate.

    Always float32, whatever the training precision: a bfloat16 output would round every
    prediction to steps of ~0.004 near +-1 before it is scored and written."""
    model.eval()
    gated = has_gate(model)
    width = 2 + (len(GATE_COLUMNS) if gated else 0)
    total = np.zeros((trial.length, width), np.float64)
    count = np.zeros((trial.length, 1), np.float64)
    starts = window_starts(trial.length, cfg.window, cfg.hop)
    for i in range(0, len(starts), cfg.batch_size):
        chunk = starts[i:i + cfg.batch_size]
        batch = make_batch([(trial, s) for s in chunk], cfg.window).to(device)
        with torch.autocast(device.type, enabled=False):  # float32 even inside a caller's autocast
            if gated:
                out, gates = model(batch.streams, batch.padding, return_gates=True)
                out = torch.cat([out, gates["audio"], gates["visual"], gates["fusion"]], dim=-1)  # (B, L, 9)
            else:
                out = model(batch.streams, batch.padding)  # (B, L, 2)
        out = out.cpu().numpy()
        for j, start in enumerate(chunk):
            n = min(cfg.window, trial.length - start)
            total[start:start + n] += out[j, :n]
            count[start:start + n] += 1
    mean = total / count
    prediction = smooth(mean[:, :2], smoothing).astype(np.float32)
    return prediction, (mean[:, 2:].astype(np.float32) if gated else None)


def fold_ccc(predictions: dict[str, np.ndarray], trials: list[TrialData | StoredTrial]) -> dict[str, float]:
    """CCC per target over all valid frames of ``trials`` concatenated."""
    scores = {}
    for j, target in enumerate(TARGETS):
        pred = np.concatenate([predictions[t.name][t.valid[:, j], j] for t in trials]) if trials else np.array([])
        true = np.concatenate([t.labels[t.valid[:, j], j] for t in trials]) if trials else np.array([])
        # no valid frame: NaN (train_fold has said so once, in selection_targets)
        scores[f"ccc_{target}"] = ccc(pred, true) if pred.size else math.nan
    scores["ccc_mean"] = (scores["ccc_valence"] + scores["ccc_arousal"]) / 2
    return scores


def evaluate(model, trials: list[StoredTrial], cfg: TrainConfig, device, smoothing: int,
             prepare) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predict each trial and score the fold: (scores, predictions, IACA gate weights; {}
    without gate). ``prepare`` loads a trial as the model's (normalised) input, one trial at
    a time, so only one is ever in memory."""
    predictions, gates = {}, {}
    for t in trials:
        predictions[t.name], trial_gates = predict_trial_and_gates(model, prepare(t), cfg, device, smoothing)
        if trial_gates is not None:
            gates[t.name] = trial_gates
    return fold_ccc(predictions, trials), predictions, gates


def missing_audio_scores(model, val: list[StoredTrial], normalizer: Normalizer, fill: dict[str, np.ndarray],
                         cfg: TrainConfig, device, smoothing: int) -> tuple[dict, dict]:
    """Validation CCC with a share of the audio frames dropped (given the ``fill`` rows), per
    pattern, over all validation trials and over the longest one alone (the paper's
    one-video variant).

    For a model with an IACA gate also: the mean stage-2 gate weights (G_av0..2: audio,
    visual, joint) on the dropped and on the kept frames of all validation trials, per
    share, and, as the second value, the longest trial's gate weights at the largest share
    ({pattern: {"share", "dropped" (T,), "gates" (T, 7)}}), to show where the gate moves."""
    longest = max(val, key=lambda t: t.length, default=None)
    results: dict = {"longest_trial": longest.name if longest else None, "fill": cfg.missing_audio.fill}
    traces: dict = {}
    for pattern in cfg.missing_audio.patterns:
        results[pattern] = {"all_trials": {}, "longest_trial": {}}
        for share in cfg.missing_audio.shares:
            dropped = {t.name: missing_frames(t, share, pattern, cfg.seed) for t in val}

            def with_audio_dropped(t: StoredTrial) -> TrialData:
                return normalizer.apply(drop_audio(t.load(), dropped[t.name], fill))

            scores, predictions, gates = evaluate(model, val, cfg, device, smoothing, with_audio_dropped)
            results[pattern]["all_trials"][f"{share:g}"] = scores
            if longest is not None:
                results[pattern]["longest_trial"][f"{share:g}"] = fold_ccc(predictions, [longest])
            if gates:
                results[pattern].setdefault("gates", {})[f"{share:g}"] = {
                    part: mean_stage2_gates(gates, dropped, part == "dropped") for part in ("dropped", "kept")}
                if longest is not None and share == max(cfg.missing_audio.shares):
                    traces[pattern] = {"share": share, "dropped": dropped[longest.name], "gates": gates[longest.name]}
    return results, traces


def mean_stage2_gates(gates: dict[str, np.ndarray], frames: dict[str, np.ndarray], select: bool) -> list[float] | None:
    """Mean G_av0..2 over the frames where ``frames[trial] == select``, all trials pooled;
    None when there is no such frame."""
    chosen = [g[frames[name] == select, 4:7] for name, g in gates.items()]
    pooled = np.concatenate(chosen) if chosen else np.zeros((0, 3))
    return pooled.mean(axis=0).tolist() if len(pooled) else None


# --- training --------------------------------------------------------------------------------


def selection_targets(model_name: str, fold: dict, trials: list[StoredTrial], role: str = "validation",
                      selects: bool = True) -> tuple[str, ...]:
    """The targets with valid frames in ``trials`` (the fold's ``role`` trials): both, or the
    one annotated there (said loudly, and recorded in the metrics). When ``selects``, their
    mean CCC picks the epoch. Trials with no frame of either target can neither select nor
    be scored: that stops the job, since an untrained model must never reach a report."""
    scorable = tuple(t for j, t in enumerate(TARGETS) if any(v.valid[:, j].any() for v in trials))
    where = f"{model_name} fold {fold['fold']}"
    names = ", ".join(t.name for t in trials) or "none"
    if not scorable:
        remedy = ("fix the annotations or the folds (learning.n_folds, learning.fold_groups)" if role == "validation"
                  else "another seed (learning.seeds) or a larger learning.train.inner_share draws other groups, "
                       "or set learning.train.selection: validation")
        raise ValueError(f"{where} cannot be scored: its {role} trials ({names}) have no annotated frame for "
                         f"valence nor arousal (all -5 or empty), so no epoch can be selected or scored; {remedy}")
    for target in TARGETS:
        if target not in scorable:
            effects = ([f"epochs are selected on {scorable[0]} alone"] if selects else []) + (
                [f"this fold has no {target} CCC"] if role == "validation" else [])
            log.warning("!!! %s: its %s trials (%s) have no annotated %s frame: %s (recorded in metrics.json and "
                        "the report) !!!", where, role, names, target, " and ".join(effects))
    return scorable


def inner_split(fold: dict, cfg: TrainConfig) -> list[str]:
    """The fold's inner selection trials: ``max(1, round(inner_share * n_groups))`` whole
    groups of its training trials (folds.json's ``train_groups``: a video's trials, a
    subject's, stay on one side), drawn from (seed, fold) alone, so a rerun or a resumed run
    draws the same, another seed draws others, and the training's random stream is untouched."""
    where = f"fold {fold['fold']}"
    if "train_groups" not in fold:
        raise ValueError(f"{where} has no train_groups: folds.json predates inner selection: rerun make_folds "
                         "(or set learning.train.selection: validation)")
    groups = sorted((sorted(g) for g in fold["train_groups"] if g), key=lambda g: g[0])
    if sorted(t for g in groups for t in g) != sorted(fold["train"]):
        raise ValueError(f"{where}: its train_groups are not a partition of its training trials: folds.json is "
                         "inconsistent, rerun make_folds")
    n_inner = max(1, round(cfg.inner_share * len(groups)))
    if n_inner >= len(groups):
        raise ValueError(f"learning.train.inner_share {cfg.inner_share:g} holds out {n_inner} of the {len(groups)} "
                         f"training group(s) of {where} for selection, which leaves none to train on: lower it, "
                         "use more folds' worth of training videos, or set learning.train.selection: validation")
    chosen = np.random.default_rng([cfg.seed, fold["fold"]]).choice(len(groups), size=n_inner, replace=False)
    return sorted(t for i in chosen for t in groups[i])


def selection_optimism(history: list[dict], selected_epoch: int, targets: tuple[str, ...]) -> dict:
    """What selecting on the scored validation fold would have flattered it by: the
    validation CCCs at the epoch the fold's own mean CCC (over ``targets``) picks among every
    epoch trained, by validation mode's rule (first maximum, NaN never picked), minus those at
    ``selected_epoch``. NaN when no epoch has a finite validation score."""
    keys = ("ccc_valence", "ccc_arousal", "ccc_mean")
    peeked, best = None, -math.inf
    for row in history:
        score = float(np.mean([row[f"val_ccc_{t}"] for t in targets]))
        if not math.isnan(score) and score > best:
            peeked, best = row["epoch"], score
    if peeked is None:
        return {"peeked_epoch": None, **{k: math.nan for k in keys}}
    at = {row["epoch"]: row for row in history}
    return {"peeked_epoch": peeked, **{k: at[peeked][f"val_{k}"] - at[selected_epoch][f"val_{k}"] for k in keys}}


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at ``max_epochs``."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    progress = (epoch - cfg.warmup_epochs) / max(1, cfg.max_epochs - cfg.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * progress))


def fingerprint(model_name: str, fusion_model: str, hparams: dict, cfg: TrainConfig, fold: dict,
                paths: dict[str, Path]) -> str:
    """What a resumable checkpoint must match: run, architecture, settings (seed and
    selection included), fold and input files."""
    files = {name: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for name, p in sorted(paths.items())}
    blob = json.dumps([model_name, fusion_model, hparams, asdict(cfg), fold, files], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def train_fold(model_name: str, hparams: dict, fold: dict, aligned: dict[str, Path], out_dir: str | Path,
               cfg: TrainConfig, *, fusion_model: str | None = None, streams: dict[str, list[str]] | None = None,
               audio_fill: dict[str, np.ndarray] | None = None, device: str = "auto", threads: int = 1,
               stop_after_epochs: int | None = None, feature_provenance: dict | None = None) -> dict:
    """Train the run ``model_name`` (a fusion model, a run ``<model>@<stream set>`` or a named
    experiment) on ``fold`` ({"fold", "train", "validation"} trial lists, and "train_groups"
    for inner selection) with the feature ``streams`` ({"audio": [...], "visual": [...]};
    None: every stream the aligned files hold), write model.pt, metrics.json, history.csv and
    val_predictions.h5 into ``out_dir``.

    ``fusion_model``: the architecture to build, for a run whose name is not one (None: the
    run's ``<model>`` part, ``split_run``).

    ``cfg.selection``: "inner" trains on the fold's training trials less an inner split
    (``inner_split``) whose mean CCC picks the epoch; the normaliser sees only the trials
    trained on. "validation" picks on the validation fold. Either way the validation fold is
    scored every epoch (history.csv's ``val_*``; ``inner_*`` too with "inner") and with the
    selected epoch's model at the end.

    ``audio_fill``: the row a dropped frame gets per audio stream in the missing-audio test
    (``vafusion.features.silence.read_fill`` of ``cfg.missing_audio.fill``); None skips it.
    ``hparams["smoothing"]`` (frames, 0: off) smooths every prediction.

    ``feature_provenance``: what made the features (``vafusion.learning.provenance.aligned_record``),
    kept in model.pt so that predictions can be checked against it.

    ``stop_after_epochs`` interrupts the run after that many epochs in this call (the
    resume test uses it); the checkpoint then carries on in the next call.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    architecture = fusion_model if fusion_model is not None else split_run(model_name)[0]
    # Deterministic on the CPU with a fixed seed and thread count (checked by the tests);
    # torch.use_deterministic_algorithms is not needed there and costs up to 10x.
    torch.set_num_threads(max(1, threads))
    paths = {name: Path(aligned[name]) for name in fold["train"] + fold["validation"]}
    if streams is None:
        streams = by_modality(open_trial(paths[fold["train"][0]]).layout)
    names = streams["visual"] + streams["audio"]
    inner_names = inner_split(fold, cfg) if cfg.selection == "inner" else []
    held_out = set(inner_names)
    train = [open_trial(paths[n], names) for n in fold["train"] if n not in held_out]
    inner = [open_trial(paths[n], names) for n in inner_names]
    val = [open_trial(paths[n], names) for n in fold["validation"]]
    val_targets = selection_targets(model_name, fold, val, selects=not inner)
    # the trials whose mean CCC picks the epoch, and the targets it averages
    picking, role = (inner, "inner selection") if inner else (val, "validation")
    selection = selection_targets(model_name, fold, inner, role) if inner else val_targets
    if inner:
        log.info("%s fold %d: epochs selected on %d held-out training trial(s) (seed %d): %s", model_name,
                 fold["fold"], len(inner), cfg.seed, ", ".join(inner_names))
    normalizer = Normalizer.fit(train)  # the trials trained on only

    def normalised(t: StoredTrial) -> TrialData:
        return normalizer.apply(t.load())

    dims = stream_dims(train[0])
    smoothing = int(hparams.get("smoothing", 0))

    torch.manual_seed(cfg.seed)
    model = build_fusion_model(architecture, dims, hparams, window=cfg.window, streams=streams).to(dev)
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
    rng = np.random.default_rng(cfg.seed)
    state = TrainState()
    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    checkpoint = out_dir / "last.pt"
    key = fingerprint(model_name, architecture, {**hparams, "streams": streams}, cfg, fold, paths)
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint, dev)
        if saved.get("fingerprint") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            best_weights = saved["best_weights"]
            state = TrainState(**saved["state"])
            rng.bit_generator.state = saved["numpy_rng"]
            torch.set_rng_state(saved["torch_rng"])
            log.info("resuming %s fold %d after epoch %d", model_name, fold["fold"], state.epoch)
        else:
            log.info("ignoring %s: it belongs to other settings or inputs", checkpoint)

    windows = [(t, s) for t in train for s in window_starts(t.length, cfg.window, cfg.hop)]
    epochs_this_call = 0
    while state.epoch < cfg.max_epochs and state.bad_epochs < cfg.patience:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            return {"interrupted_after_epoch": state.epoch}
        model.train()
        order = rng.permutation(len(windows))
        started, losses = time.perf_counter(), []
        # the next batch is read from storage and standardised while the model trains on this one
        batches = prefetch(make_batch([windows[j] for j in order[i:i + cfg.batch_size]], cfg.window, normalizer)
                           for i in range(0, len(order), cfg.batch_size))
        for batch in batches:
            batch = batch.to(dev)
            if not batch.valid.any():
                continue
            with training_autocast(dev, cfg.precision):
                out = model(batch.streams, batch.padding)
            loss = ccc_loss(out.float(), batch.labels, batch.valid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        train_seconds = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()
        scores, _, _ = evaluate(model, val, cfg, dev, smoothing, normalised)
        inner_scores = evaluate(model, inner, cfg, dev, smoothing, normalised)[0] if inner else {}
        state.epoch += 1
        epochs_this_call += 1
        picked_on = inner_scores if inner else scores
        score = float(np.mean([picked_on[f"ccc_{t}"] for t in selection]))
        improved = not math.isnan(score) and score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.history.append({"epoch": state.epoch, "train_loss": float(np.mean(losses)) if losses else math.nan,
                              **{f"inner_{k}": v for k, v in inner_scores.items()},
                              **{f"val_{k}": v for k, v in scores.items()},
                              "lr": lr, "seconds": train_seconds,
                              "windows_per_s": len(windows) / train_seconds if train_seconds > 0 else math.nan})
        log.info("%s fold %d epoch %d: loss %.4f,%s val CCC v %.3f a %.3f%s", model_name, fold["fold"], state.epoch,
                 state.history[-1]["train_loss"],
                 f" inner CCC v {inner_scores['ccc_valence']:.3f} a {inner_scores['ccc_arousal']:.3f}," if inner else "",
                 scores["ccc_valence"], scores["ccc_arousal"], " *" if improved else "")
        with atomic_output(checkpoint) as tmp:
            torch_save({"fingerprint": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "best_weights": best_weights,
                        "state": asdict(state), "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state()}, tmp)

    if state.best_epoch < 1:
        raise RuntimeError(f"{model_name} fold {fold['fold']}: no epoch of {state.epoch} had a finite {role} CCC "
                           f"({' + '.join(selection)} on {', '.join(t.name for t in picking)}; last training loss "
                           f"{state.history[-1]['train_loss'] if state.history else math.nan:.4g}): the model never "
                           "trained to a scorable state (diverged to NaN, or constant predictions); nothing is saved")
    model.load_state_dict(best_weights)
    scores, predictions, gates = evaluate(model, val, cfg, dev, smoothing, normalised)
    robustness, gate_traces = ({}, {}) if audio_fill is None else missing_audio_scores(
        model, val, normalizer, {s: audio_fill[s] for s in streams["audio"]}, cfg, dev, smoothing)
    throughput = [h["windows_per_s"] for h in state.history if not math.isnan(h["windows_per_s"])]
    # with inner selection: how optimistic the validation fold's own pick would have been
    optimism = selection_optimism(state.history, state.best_epoch, val_targets) if inner else None
    metrics = {"model": model_name, "fusion_model": architecture, "fold": fold["fold"], "seed": cfg.seed, **scores,
               "best_epoch": state.best_epoch, "selection": cfg.selection, "inner_trials": inner_names,
               "selection_optimism": optimism,
               "streams": streams, "stream_sources": stream_sources(feature_provenance),
               "selected_on": [f"ccc_{t}" for t in selection],
               "unscored_targets": [t for t in TARGETS if t not in val_targets],
               "normaliser_constant_dims": normalizer.summary(),
               "epochs": state.epoch, "windows_per_s": float(np.median(throughput)) if throughput else math.nan,
               "n_train_trials": len(train), "n_validation_trials": len(val),
               "n_valid_frames": {t: int(sum(v.valid[:, j].sum() for v in val)) for j, t in enumerate(("valence", "arousal"))},
               "missing_audio": robustness, "device": str(dev), "cuda_status": cuda_status()[1]}
    write_outputs(out_dir, model, model_name, hparams, dims, streams, normalizer, cfg, fold, metrics, state.history,
                  predictions, val, gates, gate_traces, robustness.get("longest_trial"), feature_provenance)
    checkpoint.unlink(missing_ok=True)
    return metrics


def stream_sources(record: dict | None) -> dict:
    """Per stream, what made its features (from the record of ``aligned_record``), for the
    reports: extractor, weights and sha256 (or RANDOM-INIT and seed), settings for external
    features with each trial file's hash."""
    keys = ("extractor", "weights", "weights_sha256", "weights_seed", "files_sha256")
    return {s: {k: e[k] for k in keys if k in e} | ({"params": e["params"]} if e.get("extractor") == "external" else {})
            for s, e in ((record or {}).get("streams") or {}).items()}


def write_outputs(out_dir: Path, model, model_name, hparams, dims, streams, normalizer, cfg, fold, metrics, history,
                  predictions, val, gates, gate_traces, longest, feature_provenance) -> None:
    """val_predictions.h5: a group per validation trial with ``prediction``, ``label``,
    ``valid`` and, for an IACA model, ``gates`` (T, 7: GATE_COLUMNS); the longest trial's
    group also has ``gates_missing_audio_<pattern>`` with its ``dropped_<pattern>`` frames."""
    with atomic_output(out_dir / "model.pt") as tmp:
        torch_save({"model_name": model_name, "fusion_model": metrics["fusion_model"], "hparams": hparams,
                    "dims": dims, "streams": streams, "state_dict": model.state_dict(),
                    "selection": metrics["selection"], "inner_trials": metrics["inner_trials"],
                    "normalizer": normalizer.state(), "train_config": asdict(cfg), "fold": fold["fold"],
                    "metrics": {k: metrics[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch")},
                    **({RECORD_KEY: feature_provenance} if feature_provenance is not None else {})}, tmp)
    with atomic_output(out_dir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]) if history else ["epoch"])
        writer.writeheader()
        writer.writerows(history)
    with atomic_output(out_dir / "val_predictions.h5") as tmp, h5py.File(tmp, "w") as h5:
        for trial in val:
            group = write_trial_predictions(h5, trial.name, predictions[trial.name], trial.labels, trial.valid)
            if trial.name in gates:
                group["gates"] = gates[trial.name]
                group["gates"].attrs["columns"] = list(GATE_COLUMNS)
            if trial.name == longest:
                for pattern, trace in gate_traces.items():
                    group[f"gates_missing_audio_{pattern}"] = trace["gates"]
                    group[f"gates_missing_audio_{pattern}"].attrs["share"] = trace["share"]
                    group[f"dropped_{pattern}"] = trace["dropped"]
    with atomic_output(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float) + "\n")


# --- test predictions ------------------------------------------------------------------------

def load_checkpoint(path: str | Path, device: torch.device) -> dict:
    """A checkpoint written by ``train_fold``, loaded without running code: only tensors,
    plain Python values and numpy arrays are rebuilt (``vafusion.weights.safe_load``)."""
    try:
        return safe_load(path, map_location=device)
    except pickle.UnpicklingError as err:
        if not refused_as_unsafe(err):
            raise ValueError(f"{path}: cannot be read (corrupt or not a checkpoint): {err}") from None
        raise ValueError(f"{path}: refused, it holds Python objects other than tensors and plain values, and "
                         f"unpickling them could run code ({unsafe_global(err)}); delete it") from None


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Normalizer, TrainConfig, int]:
    """(model, its normaliser, its training settings, its smoothing in frames); the model's
    streams are ``model.fused_streams``."""
    saved = load_checkpoint(path, device)
    # a model.pt saved before inner selection picked its epoch on the validation fold and
    # never held out an inner share
    cfg = TrainConfig.from_dict({"selection": "validation", "inner_share": math.nan, **saved["train_config"]})
    streams = saved.get("streams", STREAMS_OF_OLDER_MODELS)
    # one saved before named experiments was always its run's <model> part
    architecture = saved.get("fusion_model") or split_run(saved["model_name"])[0]
    model = build_fusion_model(architecture, saved["dims"], saved["hparams"], window=cfg.window,
                               streams=streams).to(device)
    model.fused_streams = streams
    model.load_state_dict(saved["state_dict"])
    return model.eval(), Normalizer.from_state(saved["normalizer"]), cfg, int(saved["hparams"].get("smoothing", 0))


def predict_test_trials(model_paths: list[str | Path], aligned: dict[str, Path], out_dir: str | Path,
                        device: str = "auto") -> None:
    """Average the fold models' per-frame predictions; one ``<trial>.txt`` per test trial
    (header ``valence,arousal``, one row per video frame)."""
    dev = resolve_device(device)
    models = [load_model(p, dev) for p in model_paths]
    out_dir = Path(out_dir)
    for name, path in sorted(aligned.items()):
        with h5py.File(path) as h5:  # one prediction per decoded video frame
            n_video = int(h5.attrs.get("n_video_frames", -1))
        loaded: dict[tuple[str, ...], TrialData] = {}  # the fold models of a run share their streams: read once
        predictions = []
        for m, norm, cfg, smoothing in models:
            streams = tuple(m.fused_streams["visual"] + m.fused_streams["audio"])
            if streams not in loaded:
                loaded[streams] = load_trial(path, streams)
                if n_video >= 0 and loaded[streams].length != n_video:
                    raise ValueError(f"{path}: {loaded[streams].length} rows for a video of {n_video} decoded frames")
            predictions.append(predict_trial(m, norm.apply(loaded[streams]), cfg, dev, smoothing))
        mean = np.mean(predictions, axis=0)
        with atomic_output(out_dir / f"{name}.txt") as tmp:
            lines = ["valence,arousal"] + [f"{v:.6f},{a:.6f}" for v, a in mean]
            tmp.write_text("\n".join(lines) + "\n")
        log.info("%s: %d frames predicted from %d fold models", name, len(mean), len(models))
