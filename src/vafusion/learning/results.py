"""Reading what the trainings wrote (metrics.json, history.csv, val_predictions.h5 per model
and fold) into the numbers the reports show: statistics over folds, the missing-audio
curves, CCC per validation trial."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vafusion.learning.ccc import ccc
from vafusion.learning.settings import MISSING_AUDIO_PATTERNS

TARGETS = ("valence", "arousal")
MISSING_SCOPES = (("all_trials", "all validation trials"), ("longest_trial", "longest validation trial"))


@dataclass(frozen=True)
class Run:
    """One model trained on one fold: its metrics, its epochs, its validation predictions."""
    metrics: dict
    history: list[dict]
    predictions: Path

    @property
    def model(self) -> str:
        return self.metrics["model"]

    @property
    def fold(self) -> int:
        return self.metrics["fold"]

    @property
    def seed(self) -> int:
        return self.metrics.get("seed", 0)


def write_trial_predictions(h5: h5py.File, trial: str, prediction: np.ndarray, label: np.ndarray,
                            valid: np.ndarray) -> h5py.Group:
    """One validation trial's group of val_predictions.h5 (a run's or an ensemble's):
    ``prediction``, ``label`` (T, 2) and ``valid`` (T, 2), columns valence, arousal."""
    group = h5.create_group(trial)
    group["prediction"], group["label"], group["valid"] = prediction, label, valid
    return group


def trained(row: dict) -> bool:
    """A run's metrics, not an ensemble's (a mean of runs) or a zero-training baseline's."""
    return "ensemble" not in row and "baseline" not in row


def read_metrics(path: str | Path) -> dict:
    """A run's metrics.json; a run without a selected epoch (an untrained model) is refused,
    so it can never be averaged into a report."""
    metrics = json.loads(Path(path).read_text())
    if not trained(metrics):  # a mean of trained runs (each checked here), or a zero-training baseline
        return metrics
    if metrics.get("best_epoch", -1) < 1:
        raise ValueError(f"{path}: best_epoch {metrics.get('best_epoch')}: this model was never selected at any "
                         "epoch (an untrained model); retrain it (delete the file) instead of reporting it")
    return metrics


def load_metrics(paths: list[str | Path]) -> list[dict]:
    rows = [read_metrics(p) for p in paths]
    return sorted(rows, key=lambda r: (r["model"], r.get("seed", 0), r["fold"]))


def unscored(rows: list[dict]) -> list[str]:
    """One line per model and fold that has no CCC for a target (its validation trials had
    no annotated frame of it; the epoch was selected on the other target)."""
    return [f"{r['model']} fold {r['fold']}: no annotated {t} frame in its validation trials, so no {t} CCC "
            f"(epoch selected on {', '.join(r.get('selected_on', []))}); the {t} and mean columns average the "
            "other folds" for r in rows for t in r.get("unscored_targets", [])]


def load_runs(metrics_files: list[str | Path], history_files: list[str | Path],
              prediction_files: list[str | Path]) -> list[Run]:
    """The three lists are parallel (one entry per model and fold)."""
    runs = []
    for metrics, history, predictions in zip(metrics_files, history_files, prediction_files, strict=True):
        with open(history, newline="") as fh:
            runs.append(Run(read_metrics(metrics), list(csv.DictReader(fh)), Path(predictions)))
    return sorted(runs, key=lambda r: (r.model, r.seed, r.fold))


def stats(values: list[float]) -> tuple[float, float]:
    """(mean, population std) ignoring NaN; NaN when every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)), float(np.nanstd(values))


def best_run(runs: list[Run]) -> Run:
    """The run with the highest mean validation CCC (the first one when all are NaN)."""
    scored = [r for r in runs if not math.isnan(r.metrics["ccc_mean"])]
    return max(scored, key=lambda r: r.metrics["ccc_mean"], default=runs[0])


FILL_NAMES = {"zeros": "zeros at the audio networks' input", "silence": "features of silent audio"}


def missing_audio_fill(rows: list[dict]) -> str:
    """What the dropped audio frames were given in these runs (``learning.train.missing_audio.fill``),
    as the reports name it; runs that disagree are an error (their curves cannot be compared)."""
    fills = {r["missing_audio"].get("fill", "silence") for r in rows if r.get("missing_audio")}
    if len(fills) > 1:
        raise ValueError(f"the runs' missing-audio fills differ ({', '.join(sorted(fills))}): rerun them with one")
    return FILL_NAMES[fills.pop()] if fills else "none"


def missing_audio_patterns(rows: list[dict]) -> list[str]:
    return [p for p in MISSING_AUDIO_PATTERNS if any(p in r.get("missing_audio", {}) for r in rows)]


def missing_audio_curve(rows: list[dict], model: str, pattern: str, scope: str,
                        target: str) -> tuple[list[float], list[float]]:
    """(shares, CCC of ``target`` averaged over the model's folds) for one pattern and scope."""
    mine = [r["missing_audio"][pattern][scope] for r in rows
            if r["model"] == model and pattern in r.get("missing_audio", {})]
    shares = list(mine[0]) if mine else []
    return [float(s) for s in shares], [stats([m[s][f"ccc_{target}"] for m in mine])[0] for s in shares]


def per_trial_ccc(runs: list[Run]) -> list[dict]:
    """CCC per validation trial and target (NaN where the trial has no valid frame of the
    target or both series are one constant), one row per fold and trial."""
    rows = []
    for run in runs:
        with h5py.File(run.predictions) as h5:
            for trial in sorted(h5):
                pred, label, valid = h5[trial]["prediction"][:], h5[trial]["label"][:], h5[trial]["valid"][:]
                row = {"model": run.model, "seed": run.seed, "fold": run.fold, "trial": trial}
                for j, target in enumerate(TARGETS):
                    row[f"frames_{target}"] = int(valid[:, j].sum())
                    row[f"ccc_{target}"] = ccc(pred[valid[:, j], j], label[valid[:, j], j]) if valid[:, j].any() \
                        else math.nan
                rows.append(row)
    return rows


def write_per_trial_csv(rows: list[dict], path: str | Path) -> None:
    columns = ["model", "seed", "fold", "trial"] + [f"frames_{t}" for t in TARGETS] + [f"ccc_{t}" for t in TARGETS]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r[c] if not c.startswith("ccc_") else f"{r[c]:.6f}" for c in columns])
