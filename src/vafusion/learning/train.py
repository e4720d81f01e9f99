"""Training one fusion model on one fold and seed.

- Windows of ``window`` frames every ``hop`` (the last flush with the trial's end); short
  trials are padded and the padding masked.
- Loss 2 - CCC_valence - CCC_arousal over the batch's valid frames; gradients clipped to a
  global norm of 1.0 (ours: neither paper gives a value, docs/fidelity.md).
- Adam or AdamW (``optimizer``), linear warm-up then cosine decay of the learning rate (per
  epoch), early stopping on the mean CCC of the selection trials
  (``vafusion.learning.selection``); seeded and deterministic on the CPU.
- Seeds: the initial weights and the window order come from (seed, fold)
  (``settings.training_seed``), so every fold starts from its own weights.
- bf16 autocast on CUDA (``precision: auto``) or anywhere (``bfloat16``), after a probe
  against float32 on the first batch (``vafusion.precision``): float32 when they disagree.
- Refit (``refit``, with inner selection): the epoch count the inner split chose is trained
  again from the same initialisation on all of the fold's training trials (the inner ones
  too, normaliser refitted), and that model is kept.
- A checkpoint after every epoch (``last.pt``) lets an interrupted training resume where
  it stopped (in either phase); it is only reused when the model, settings, fold and input
  files are the same, and removed once the training has finished.
- Validation: ``vafusion.learning.predict``; Praveen & Alam's missing-audio test:
  ``vafusion.learning.missing_audio``.
- Memory stays flat in the data's size: training windows are read from the aligned files
  as batches are made, validation trials are loaded one at a time (``vafusion.learning.data``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from vafusion.annotations import TARGETS
from vafusion.devices import cuda_status, resolve_device
from vafusion.features.common import prefetch
from vafusion.features.registry import by_modality
from vafusion.io import atomic_output
from vafusion.learning.ccc import ccc_loss
from vafusion.learning.data import (Normalizer, StoredTrial, TrialData, make_batch, open_trial, stream_dims,
                                    window_starts, with_unvoiced_filled)
from vafusion.learning.gates import gate_diagnostics
from vafusion.learning.missing_audio import missing_audio_scores
from vafusion.learning.predict import GATE_COLUMNS, evaluate, load_checkpoint
from vafusion.learning.provenance import RECORD_KEY
from vafusion.learning.results import write_trial_predictions
from vafusion.learning.selection import inner_split, oracle_epoch_gap, selection_targets
from vafusion.learning.settings import TrainConfig, training_seed
from vafusion.learning.streams import split_run
from vafusion.models import build_fusion_model
from vafusion.precision import checked_bf16
from vafusion.weights import torch_save

log = logging.getLogger(__name__)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CLIP_NORM = 1.0  # global gradient norm (ours; docs/fidelity.md)


def autocast_requested(device: torch.device, precision: str) -> bool:
    """bfloat16 autocast for the training forward: on CUDA with ``auto``, on any device (the
    CPU too, so CI runs the GPU's code path) with ``bfloat16``, never with ``float32``.
    Predictions and scores never run under it (``predict.predict_trial_and_gates``)."""
    return precision == "bfloat16" or (precision == "auto" and device.type == "cuda")


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at ``max_epochs``."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    progress = (epoch - cfg.warmup_epochs) / max(1, cfg.max_epochs - cfg.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * progress))


def fingerprint(model_name: str, fusion_model: str, hparams: dict, cfg: TrainConfig, fold: dict,
                paths: dict[str, Path]) -> str:
    """What a resumable checkpoint must match: run, architecture, settings (seed, selection
    and refit included), fold and input files."""
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


class Fit:
    """One model trained from its seeded initialisation on one set of windows: the model,
    its optimiser and schedule, the window order's random stream and the state."""

    def __init__(self, build, cfg: TrainConfig, init_seed: int, device: torch.device):
        torch.manual_seed(init_seed)
        self.model = build().to(device)
        self.optimizer = OPTIMIZERS[cfg.optimizer](self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(e, cfg))
        self.rng = np.random.default_rng(init_seed)
        self.state = TrainState()
        self.best_weights = self.weights()

    def weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def snapshot(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best_weights": self.best_weights,
                "state": asdict(self.state), "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}

    def restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.best_weights = saved["best_weights"]
        self.state = TrainState(**saved["state"])
        self.rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])

    def epoch(self, windows: list[tuple[StoredTrial, int]], normalizer: Normalizer, cfg: TrainConfig,
              device: torch.device, bf16: bool) -> dict:
        """One pass over ``windows`` in a seeded order: {"train_loss", "lr", "seconds", "windows_per_s"}."""
        self.model.train()
        order = self.rng.permutation(len(windows))
        started, losses = time.perf_counter(), []
        # the next batch is read from storage and standardised while the model trains on this one
        batches = prefetch(make_batch([windows[j] for j in order[i:i + cfg.batch_size]], cfg.window, normalizer)
                           for i in range(0, len(order), cfg.batch_size))
        for batch in batches:
            batch = batch.to(device)
            if not batch.valid.any():
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = self.model(batch.streams, batch.padding)
            loss = ccc_loss(out.float(), batch.labels, batch.valid)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        seconds = time.perf_counter() - started
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        self.scheduler.step()
        return {"train_loss": float(np.mean(losses)) if losses else math.nan, "lr": lr, "seconds": seconds,
                "windows_per_s": len(windows) / seconds if seconds > 0 else math.nan}


def training_precision(model: torch.nn.Module, windows: list, normalizer: Normalizer, cfg: TrainConfig,
                       device: torch.device, what: str) -> tuple[bool, str]:
    """(run the forward under bf16 autocast?, what the metrics record): autocast when asked
    for and a probe on the first batch agrees with float32 (``vafusion.precision``)."""
    if not autocast_requested(device, cfg.precision):
        return False, "float32"
    batch = make_batch(windows[:cfg.batch_size], cfg.window, normalizer).to(device)
    was_training = model.training
    model.eval()  # no dropout: both runs see the same network
    try:
        result = checked_bf16(model, lambda: model(batch.streams, batch.padding), device.type, what)
    finally:
        model.train(was_training)
    return (True, "bfloat16") if result.agrees else (False, f"float32 ({result.describe()})")


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
    (``selection.inner_split``) whose mean CCC picks the epoch; the normaliser sees only the
    trials trained on. "validation" picks on the validation fold. Either way the validation
    fold is scored every epoch (history.csv's ``val_*``; ``inner_*`` too with "inner") and
    with the kept model at the end. ``cfg.refit`` (with "inner"): the kept model is trained
    again on all training trials for the chosen epoch count.

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
    where = f"{model_name} fold {fold['fold']}"
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
    unvoiced_fill = None
    if cfg.unvoiced_audio is not None:  # unvoiced frames' audio reads as missing, in training and prediction
        if audio_fill is None:
            raise ValueError(f"{where}: learning.train.unvoiced_audio needs the audio streams' fill rows")
        unvoiced_fill = {s: np.asarray(audio_fill[s], np.float32) for s in streams["audio"]}
        train, inner, val = ([with_unvoiced_filled(t, cfg.unvoiced_audio, unvoiced_fill, t.path) for t in trials]
                             for trials in (train, inner, val))
        log.info("%s: the audio of frames with %s < %g is the %s fill, in training and prediction", where,
                 cfg.unvoiced_audio.stream, cfg.unvoiced_audio.threshold, cfg.missing_audio.fill)
    val_targets = selection_targets(model_name, fold, val, selects=not inner)
    # the trials whose mean CCC picks the epoch, and the targets it averages
    picking, role = (inner, "inner selection") if inner else (val, "validation")
    selection = selection_targets(model_name, fold, inner, role) if inner else val_targets
    if inner:
        log.info("%s: epochs selected on %d held-out training trial(s) (seed %d): %s", where, len(inner), cfg.seed,
                 ", ".join(inner_names))
    refit = cfg.refit and bool(inner)
    if cfg.refit and not inner:
        log.info("%s: refit is on but the epoch was selected on the validation fold, which trains nothing: no refit",
                 where)
    normalizer = Normalizer.fit(train)  # the trials trained on only
    dims = stream_dims(train[0])
    smoothing = int(hparams.get("smoothing", 0))
    init_seed = training_seed(cfg.seed, fold["fold"])

    def build() -> torch.nn.Module:
        return build_fusion_model(architecture, dims, hparams, window=cfg.window, streams=streams)

    def normalised(norm: Normalizer):
        return lambda t: norm.apply(t.load())

    checkpoint = out_dir / "last.pt"
    key = fingerprint(model_name, architecture, {**hparams, "streams": streams}, cfg, fold, paths)
    saved = None
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint, dev)
        if saved.get("fingerprint") != key or "phase" not in saved:
            log.info("ignoring %s: it belongs to other settings or inputs", checkpoint)
            saved = None

    def save(phase: str, fit: Fit, selected: dict | None = None) -> None:
        with atomic_output(checkpoint) as tmp:
            torch_save({"fingerprint": key, "phase": phase, **fit.snapshot(),
                        **({"selected": selected} if selected is not None else {})}, tmp)

    windows = [(t, s) for t in train for s in window_starts(t.length, cfg.window, cfg.hop)]
    epochs_this_call = 0

    # --- phase 1: train, and pick the epoch on the selection trials ---------------------------
    select = Fit(build, cfg, init_seed, dev)
    bf16, precision = training_precision(select.model, windows, normalizer, cfg, dev, where)
    if saved is not None and saved["phase"] == "refit":
        select.state = TrainState(**saved["selected"])  # phase 1 finished before the interruption
    else:
        if saved is not None:
            select.restore(saved)
            log.info("resuming %s after epoch %d", where, select.state.epoch)
        state = select.state
        while state.epoch < cfg.max_epochs and state.bad_epochs < cfg.patience:
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return {"interrupted_after_epoch": state.epoch}
            trained = select.epoch(windows, normalizer, cfg, dev, bf16)
            scores = evaluate(select.model, val, cfg, dev, smoothing, normalised(normalizer))[0]
            inner_scores = evaluate(select.model, inner, cfg, dev, smoothing, normalised(normalizer))[0] if inner \
                else {}
            state.epoch += 1
            epochs_this_call += 1
            picked_on = inner_scores if inner else scores
            score = float(np.mean([picked_on[f"ccc_{t}"] for t in selection]))
            improved = not math.isnan(score) and score > state.best_score
            if improved:
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                select.best_weights = select.weights()
            else:
                state.bad_epochs += 1
            state.history.append({"epoch": state.epoch, "train_loss": trained["train_loss"],
                                  **{f"inner_{k}": v for k, v in inner_scores.items()},
                                  **{f"val_{k}": v for k, v in scores.items()},
                                  "lr": trained["lr"], "seconds": trained["seconds"],
                                  "windows_per_s": trained["windows_per_s"]})
            log.info("%s epoch %d: loss %.4f,%s val CCC v %.3f a %.3f%s", where, state.epoch, trained["train_loss"],
                     f" inner CCC v {inner_scores['ccc_valence']:.3f} a {inner_scores['ccc_arousal']:.3f},"
                     if inner else "", scores["ccc_valence"], scores["ccc_arousal"], " *" if improved else "")
            save("select", select)
        if state.best_epoch < 1:
            raise RuntimeError(
                f"{where}: no epoch of {state.epoch} had a finite {role} CCC ({' + '.join(selection)} on "
                f"{', '.join(t.name for t in picking)}; last training loss "
                f"{state.history[-1]['train_loss'] if state.history else math.nan:.4g}): the model never trained to "
                "a scorable state (diverged to NaN, or constant predictions); nothing is saved")
    chosen = select.state
    history = chosen.history

    # --- phase 2 (refit): the chosen epoch count on every training trial ----------------------
    refit_record = None
    if refit:
        everything = train + inner
        normalizer = Normalizer.fit(everything)
        all_windows = [(t, s) for t in everything for s in window_starts(t.length, cfg.window, cfg.hop)]
        final = Fit(build, cfg, init_seed, dev)  # the same initial weights as phase 1
        if saved is not None and saved["phase"] == "refit":
            final.restore(saved)
            log.info("resuming %s's refit after epoch %d of %d", where, final.state.epoch, chosen.best_epoch)
        losses = [h["train_loss"] for h in final.state.history]
        while final.state.epoch < chosen.best_epoch:
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return {"interrupted_after_epoch": chosen.epoch + final.state.epoch}
            trained = final.epoch(all_windows, normalizer, cfg, dev, bf16)
            final.state.epoch += 1
            epochs_this_call += 1
            final.state.history.append({"epoch": final.state.epoch, "train_loss": trained["train_loss"]})
            losses.append(trained["train_loss"])
            log.info("%s refit epoch %d of %d on all %d training trials: loss %.4f", where, final.state.epoch,
                     chosen.best_epoch, len(everything), trained["train_loss"])
            save("refit", final, selected=asdict(chosen))
        model = final.model
        selected_scores = {k: history[chosen.best_epoch - 1][f"val_{k}"] for k in ("ccc_valence", "ccc_arousal",
                                                                                   "ccc_mean")}
        refit_record = {"epochs": chosen.best_epoch, "n_train_trials": len(everything), "train_loss": losses,
                        "selected_model": selected_scores}
    else:
        model = select.model
        model.load_state_dict(select.best_weights)

    scores, predictions, gates = evaluate(model, val, cfg, dev, smoothing, normalised(normalizer))
    robustness, gate_traces = ({}, {}) if audio_fill is None else missing_audio_scores(
        model, val, normalizer, {s: audio_fill[s] for s in streams["audio"]}, cfg, dev, smoothing)
    throughput = [h["windows_per_s"] for h in history if not math.isnan(h["windows_per_s"])]
    # with inner selection: what peeking at the scored fold could have added
    gap = oracle_epoch_gap(history, chosen.best_epoch, val_targets) if inner else None
    metrics = {"model": model_name, "fusion_model": architecture, "fold": fold["fold"], "seed": cfg.seed,
               "init_seed": init_seed, **scores,
               "best_epoch": chosen.best_epoch, "selection": cfg.selection, "inner_trials": inner_names,
               "oracle_epoch_gap": gap, "refit": refit_record,
               "streams": streams, "stream_sources": stream_sources(feature_provenance),
               "selected_on": [f"ccc_{t}" for t in selection],
               "unscored_targets": [t for t in TARGETS if t not in val_targets],
               "normaliser_neutralised_dims": normalizer.summary(),
               "epochs": chosen.epoch, "windows_per_s": float(np.median(throughput)) if throughput else math.nan,
               "n_train_trials": len(train) + (len(inner) if refit else 0), "n_validation_trials": len(val),
               "n_valid_frames": {t: int(sum(v.valid[:, j].sum() for v in val)) for j, t in enumerate(TARGETS)},
               "missing_audio": robustness, "training_precision": precision,
               "gate_diagnostics": gate_diagnostics(list(gates.values()), robustness) if gates else None,
               "device": str(dev), "cuda_status": cuda_status()[1]}
    write_outputs(out_dir, model, model_name, hparams, dims, streams, normalizer, cfg, fold, metrics, history,
                  predictions, val, gates, gate_traces, robustness.get("longest_trial"), feature_provenance,
                  unvoiced_fill=unvoiced_fill)
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
                  predictions, val: list[StoredTrial | TrialData], gates, gate_traces, longest,
                  feature_provenance, unvoiced_fill: dict[str, np.ndarray] | None = None) -> None:
    """val_predictions.h5: a group per validation trial with ``prediction``, ``label``,
    ``valid`` and, for an IACA model, ``gates`` (T, 7: GATE_COLUMNS); the longest trial's
    group also has ``gates_missing_audio_<pattern>`` with its ``dropped_<pattern>`` frames."""
    with atomic_output(out_dir / "model.pt") as tmp:
        torch_save({"model_name": model_name, "fusion_model": metrics["fusion_model"], "hparams": hparams,
                    "dims": dims, "streams": streams, "state_dict": model.state_dict(),
                    "selection": metrics["selection"], "inner_trials": metrics["inner_trials"],
                    "normalizer": normalizer.state(), "train_config": asdict(cfg), "fold": fold["fold"],
                    "metrics": {k: metrics[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch")},
                    # the rows unvoiced frames' audio reads as (learning.train.unvoiced_audio), for the test trials
                    **({"unvoiced_fill": {k: v.tolist() for k, v in unvoiced_fill.items()}} if unvoiced_fill else {}),
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
