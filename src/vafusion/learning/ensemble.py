"""Late-fusion ensembles: the per-frame weighted mean of several runs' predictions, scored
on the same cross-validation folds as its members.

Weights must never be chosen on the fold they are scored on, or the ensemble's CCC is
optimistic. ``equal`` weights look at nothing. ``ccc`` weights for fold f of seed s come
from the members' CCCs on the *other* folds of seed s; the test predictions, which are
never scored here, may use every validation fold of every seed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from vafusion.annotations import TARGETS
from vafusion.io import atomic_output
from vafusion.learning.data import TrialData
from vafusion.learning.results import write_trial_predictions
from vafusion.learning.predict import fold_ccc

log = logging.getLogger(__name__)

WEIGHT_MODES = ("equal", "ccc")
HEADER = "valence,arousal"

Weights = dict[str, dict[str, float]]  # target -> member -> weight


# --- weights ---------------------------------------------------------------------------------


def ensemble_weights(member_metrics: Mapping[str, list[dict]], mode: str, *, fold: int | None,
                     seed: int | None) -> Weights:
    """{target: {member: weight}}, each target's weights summing to 1.

    ``equal``: 1/n. ``ccc``: proportional to max(0, the member's mean ``ccc_<target>`` over
    the metrics rows in use, NaN rows ignored); every weight zero or NaN falls back to equal
    weights, with a warning. The rows in use are those of ``seed`` (None: every seed) minus
    those of ``fold`` (None: none left out, the weights for the test predictions).
    """
    members = list(member_metrics)
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown ensemble weights {mode!r}: expected one of {', '.join(WEIGHT_MODES)}")
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {members}")
    equal = {t: {m: 1 / len(members) for m in members} for t in TARGETS}
    if mode == "equal":
        return equal
    pools = {m: _pool(m, rows, fold=fold, seed=seed) for m, rows in member_metrics.items()}
    weights: Weights = {}
    for target in TARGETS:
        means = {m: _nanmean([_score(r, target) for r in rows]) for m, rows in pools.items()}
        raw = {m: max(0.0, s) if not math.isnan(s) else 0.0 for m, s in means.items()}
        total = sum(raw.values())
        if total > 0:
            weights[target] = {m: w / total for m, w in raw.items()}
        else:
            log.warning("!!! ensemble %s weights (%s): no member has a positive mean %s CCC on the folds they may "
                        "use (%s): equal weights instead !!!", target, _where(fold, seed), target,
                        ", ".join(f"{m} {s:.3f}" for m, s in means.items()))
            weights[target] = equal[target]
    return weights


def _pool(member: str, rows: list[dict], *, fold: int | None, seed: int | None) -> list[dict]:
    """The member's metrics rows the weights may look at (never ``fold`` itself)."""
    seen: set[tuple] = set()
    for r in rows:
        if r.get("model") != member:
            raise ValueError(f"metrics of {r.get('model')!r} (fold {r.get('fold')}) given as member {member!r}")
        if seed is not None and "seed" not in r:
            raise ValueError(f"{member} fold {r.get('fold')}: its metrics have no seed, cannot pick seed {seed}")
        key = (r.get("seed"), r["fold"])
        if key in seen:
            raise ValueError(f"{member}: two metrics rows for seed {key[0]} fold {key[1]}")
        seen.add(key)
    pool = [r for r in rows if (seed is None or r["seed"] == seed) and (fold is None or r["fold"] != fold)]
    if not pool:
        raise ValueError(f"{member}: no fold's metrics to weight it by ({_where(fold, seed)}); "
                         f"got folds {sorted(seen, key=str)} as (seed, fold)")
    return pool


def _score(row: dict, target: str) -> float:
    value = row.get(f"ccc_{target}")
    return math.nan if value is None else float(value)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _where(fold: int | None, seed: int | None) -> str:
    seeds = "every seed" if seed is None else f"seed {seed}"
    return f"{seeds}, every fold" if fold is None else f"{seeds}, folds other than {fold}"


def group_metrics(rows: Iterable[dict], members: list[str]) -> dict[str, list[dict]]:
    """Metrics rows (any order) grouped by their "model" key into ``members``, in that order;
    a row of another run, or a member without rows, is a wiring error."""
    if len(set(members)) != len(members):
        raise ValueError(f"an ensemble's members must differ: {members}")
    grouped: dict[str, list[dict]] = {m: [] for m in members}
    for row in rows:
        if row.get("model") not in grouped:
            raise ValueError(f"metrics of {row.get('model')!r} given, but the members are {', '.join(members)}")
        grouped[row["model"]].append(row)
    missing = [m for m, r in grouped.items() if not r]
    if missing:
        raise ValueError(f"no metrics.json given for member(s) {', '.join(missing)}")
    return grouped


# --- validation folds ------------------------------------------------------------------------


def ensemble_fold(name: str, members: Mapping[str, Path], member_metrics: Mapping[str, list[dict]], mode: str,
                  fold: int, seed: int, out_dir: str | Path) -> dict:
    """Write ``out_dir``/val_predictions.h5 and metrics.json of ensemble ``name`` on one fold
    and seed, laid out like a trained run's, so the reports can treat it as one.

    ``members``: member -> its val_predictions.h5 for this fold and seed; ``member_metrics``:
    member -> its metrics of every fold of this seed (the ``ccc`` weights use the others).
    The members must hold the same trials with identical labels and masks (they were
    scored on the same frames) and have picked their epochs the same way.
    """
    if set(members) != set(member_metrics):
        raise ValueError(f"{name}: predictions for {list(members)} but metrics for {list(member_metrics)}")
    selection = _common_selection(name, member_metrics, seed)
    weights = ensemble_weights(member_metrics, mode, fold=fold, seed=seed)
    log.info("%s seed %d fold %d: %s weights %s", name, seed, fold, mode, json.dumps(weights))
    trials, predictions = _weighted_folds(name, members, weights)
    scores = fold_ccc(predictions, trials)
    n_valid = {t: int(sum(tr.valid[:, j].sum() for tr in trials)) for j, t in enumerate(TARGETS)}
    metrics = {"model": name, "fold": fold, "seed": seed, **scores,
               "ensemble": {"members": list(members), "weights_mode": mode, "weights": weights},
               "selection": selection, "n_valid_frames": n_valid, "n_validation_trials": len(trials),
               "unscored_targets": [t for t in TARGETS if n_valid[t] == 0], "streams": None}
    out_dir = Path(out_dir)
    with atomic_output(out_dir / "val_predictions.h5") as tmp, h5py.File(tmp, "w") as h5:
        for trial in trials:
            write_trial_predictions(h5, trial.name, predictions[trial.name], trial.labels, trial.valid)
    with atomic_output(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    log.info("%s seed %d fold %d: CCC valence %.3f, arousal %.3f over %d trials", name, seed, fold,
             scores["ccc_valence"], scores["ccc_arousal"], len(trials))
    return metrics


def _common_selection(name: str, member_metrics: Mapping[str, list[dict]], seed: int) -> str | None:
    """The members' common epoch-selection mode: mixing "inner" with "validation" would
    ensemble honest and optimistic scores into one number."""
    modes = {m: {r.get("selection") for r in rows if r.get("seed", seed) == seed} for m, rows in member_metrics.items()}
    found = set().union(*modes.values())
    if len(found) != 1:
        said = "; ".join(f"{m}: {', '.join(map(str, sorted(s, key=str)))}" for m, s in modes.items())
        raise ValueError(f"ensemble {name}: its members selected their epochs differently ({said}); "
                         "train them with one learning.train.selection")
    return found.pop()


def _weighted_folds(name: str, members: Mapping[str, Path],
                    weights: Weights) -> tuple[list[TrialData], dict[str, np.ndarray]]:
    """(the fold's trials with labels and masks, trial -> weighted mean prediction (T, 2))."""
    files = {m: h5py.File(p, "r") for m, p in members.items()}
    try:
        first, *others = members
        names = sorted(files[first])
        for m in others:
            if sorted(files[m]) != names:
                extra, lacking = sorted(set(files[m]) - set(names)), sorted(set(names) - set(files[m]))
                raise ValueError(f"ensemble {name}: member {m} ({members[m]}) has other validation trials than "
                                 f"{first}: extra {extra or 'none'}, lacking {lacking or 'none'}")
        trials, predictions = [], {}
        for trial in names:
            label, valid = files[first][trial]["label"][:], files[first][trial]["valid"][:].astype(bool)
            total = np.zeros(label.shape, np.float64)
            for m in members:
                group = files[m][trial]
                pred = group["prediction"][:]
                if pred.shape != label.shape:
                    raise ValueError(f"ensemble {name}: member {m} trial {trial}: prediction of shape {pred.shape}, "
                                     f"labels of shape {label.shape}")
                if not (np.array_equal(group["label"][:], label, equal_nan=True)
                        and np.array_equal(group["valid"][:].astype(bool), valid)):
                    raise ValueError(f"ensemble {name}: member {m} trial {trial}: labels or valid mask differ from "
                                     f"{first}'s (trained on other annotations or alignment?)")
                for j, target in enumerate(TARGETS):
                    total[:, j] += weights[target][m] * pred[:, j]
            trials.append(TrialData(trial, {}, label, valid))
            predictions[trial] = total.astype(np.float32)
        return trials, predictions
    finally:
        for f in files.values():
            f.close()


# --- test predictions ------------------------------------------------------------------------


def predict_ensemble(member_dirs: Mapping[str, Path], weights: Weights, trials: list[str],
                     out_dir: str | Path) -> None:
    """One ``<trial>.txt`` per test trial (header ``valence,arousal``, a row per frame): the
    weighted mean of the members' test predictions in ``member_dirs`` (member -> folder)."""
    for target in TARGETS:
        if set(weights[target]) != set(member_dirs):
            raise ValueError(f"{target} weights for {sorted(weights[target])}, predictions of {sorted(member_dirs)}")
    out_dir = Path(out_dir)
    for trial in trials:
        rows = {m: read_predictions(Path(d) / f"{trial}.txt") for m, d in member_dirs.items()}
        first = next(iter(rows))
        for m, pred in rows.items():
            if len(pred) != len(rows[first]):
                raise ValueError(f"test trial {trial}: member {m} predicts {len(pred)} frames, "
                                 f"{first} {len(rows[first])}")
        mean = np.zeros((len(rows[first]), 2))
        for m, pred in rows.items():
            for j, target in enumerate(TARGETS):
                mean[:, j] += weights[target][m] * pred[:, j]
        with atomic_output(out_dir / f"{trial}.txt") as tmp:
            tmp.write_text("\n".join([HEADER] + [f"{v:.6f},{a:.6f}" for v, a in mean]) + "\n")
        log.info("%s: %d frames, the weighted mean of %d members", trial, len(mean), len(rows))


def read_predictions(path: Path) -> np.ndarray:
    """(T, 2) valence, arousal of a ``<trial>.txt`` written by the test predictions."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"{path}: expected the header {HEADER!r}, got {lines[0] if lines else 'an empty file'!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            rows.append([float(x) for x in fields])
        except ValueError:
            raise ValueError(f"{path}: row {i} is not two numbers: {line!r}") from None
    return np.array(rows, np.float64).reshape(-1, 2)
