"""What the bootstrap (``vafusion.learning.bootstrap``) resamples: per (run, seed, trial)
and target the sufficient statistics n, sum x, sum y, sum x^2, sum y^2, sum xy of the valid
frames (x prediction, y label), CCC and its gradient from such sums, a run's validation
predictions read from its val_predictions.h5 files, and the checks that runs compared are
comparable (the same trials and seeds, the same labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

# one run's validation predictions: {(seed, trial): (prediction (T,2), label (T,2), valid (T,2) bool)}
RunPredictions = dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]

N_STATS = 6  # n, sum x, sum y, sum x^2, sum y^2, sum xy
DATASETS = ("prediction", "label", "valid")


def load_predictions(files: Sequence[tuple[int, str | Path]]) -> RunPredictions:
    """One run's out-of-fold predictions from its (seed, val_predictions.h5) files, one per fold
    and seed. A (seed, trial) seen twice is an error naming both files: it would be counted
    twice in the pooled CCC."""
    out: RunPredictions = {}
    origin: dict[tuple[int, str], Path] = {}
    for seed, path in files:
        path = Path(path)
        with h5py.File(path, "r") as h5:
            for trial, group in h5.items():
                if not isinstance(group, h5py.Group):
                    continue
                key = (int(seed), trial)
                if key in origin:
                    raise ValueError(f"seed {seed}, trial {trial!r} is in both {origin[key]} and {path}: "
                                     "a fold listed twice, or two folds validating the same trial")
                missing = [d for d in DATASETS if d not in group]
                if missing:
                    raise ValueError(f"{path}: trial {trial!r} has no {', '.join(missing)}")
                out[key] = (np.asarray(group["prediction"][()], np.float64),
                            np.asarray(group["label"][()], np.float64),
                            np.asarray(group["valid"][()], bool))
                origin[key] = path
    return out


def trial_stats(prediction: np.ndarray, label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(2, 6): per target n, sum x, sum y, sum x^2, sum y^2, sum xy over the valid frames
    (x prediction, y label)."""
    valid = np.asarray(valid, bool)
    w = valid.astype(np.float64)
    x = np.where(valid, np.asarray(prediction, np.float64), 0.0)  # invalid frames may hold sentinels or NaN
    y = np.where(valid, np.asarray(label, np.float64), 0.0)
    return np.stack([w, x, y, x * x, y * y, x * y], axis=-1).sum(axis=0)


def ccc_from_sums(sums: np.ndarray) -> np.ndarray:
    """CCC from sufficient statistics (..., 6), population moments; NaN where there is no frame
    or the denominator vanishes (both series one identical constant, up to rounding)."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(np.asarray(sums, np.float64), -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = sx / n, sy / n
        cov = sxy / n - mx * my
        denom = (sxx / n - mx * mx) + (syy / n - my * my) + (mx - my) ** 2
        value = 2 * cov / denom
        # an exact zero can come out as ~1e-17 from the sums: treat it relative to the scale
        undefined = (n <= 0) | (denom <= 1e-12 * (sxx + syy) / n) | (denom <= 0)
    return np.where(undefined, np.nan, value)


def ccc_gradient(sums: np.ndarray) -> np.ndarray:
    """d CCC / d (n, sum x, sum y, sum x^2, sum y^2, sum xy), (..., 6), NaN where CCC is.

    With P = sx sy / n^2: CCC = N / D, N = 2 sxy / n - 2 P, D = (sxx + syy) / n - 2 P
    (the population moments of ``ccc_from_sums`` rearranged), so dCCC = (dN - CCC dD) / D."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(np.asarray(sums, np.float64), -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = ccc_from_sums(sums)
        P = sx * sy / n**2
        D = (sxx + syy) / n - 2 * P
        dP = {"n": -2 * P / n, "sx": sy / n**2, "sy": sx / n**2}
        dN = {"n": -2 * sxy / n**2 - 2 * dP["n"], "sx": -2 * dP["sx"], "sy": -2 * dP["sy"], "sxx": 0.0, "syy": 0.0,
              "sxy": 2 / n}
        dD = {"n": -(sxx + syy) / n**2 - 2 * dP["n"], "sx": -2 * dP["sx"], "sy": -2 * dP["sy"], "sxx": 1 / n,
              "syy": 1 / n, "sxy": 0.0}
        parts = [(dN[k] - value * dD[k]) / D for k in ("n", "sx", "sy", "sxx", "syy", "sxy")]
    grad = np.stack(np.broadcast_arrays(*parts), axis=-1)
    return np.where(np.isnan(value)[..., None], np.nan, grad)


def as_stats(value) -> np.ndarray:
    """A (seed, trial)'s (2, 6) sufficient statistics from (prediction, label, valid) or as given."""
    if isinstance(value, tuple):
        return trial_stats(*value)
    stats = np.asarray(value, np.float64)
    if stats.shape != (2, N_STATS):
        raise ValueError(f"unit statistics must be (2, {N_STATS}), got {stats.shape}")
    return stats


def check_predictions(runs: Mapping[str, Mapping]) -> None:
    """Predictions (not statistics): one (T, 2) shape per (seed, trial), finite at valid frames,
    the same labels and valid frames as the first run's."""
    names = list(runs)
    first = runs[names[0]]
    for name in names:
        for key, value in runs[name].items():
            if not isinstance(value, tuple):
                continue
            prediction, label, valid = (np.asarray(v) for v in value)
            valid = valid.astype(bool)
            if not prediction.shape == label.shape == valid.shape or prediction.ndim != 2 or prediction.shape[1] != 2:
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: prediction {prediction.shape}, "
                                 f"label {label.shape}, valid {valid.shape}; expected one (T, 2) shape")
            if not (np.isfinite(prediction[valid]).all() and np.isfinite(label[valid]).all()):
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: non-finite value at a valid frame")
            reference = first.get(key)
            if isinstance(reference, tuple):
                ref_label, ref_valid = np.asarray(reference[1]), np.asarray(reference[2]).astype(bool)
                if ref_valid.shape != valid.shape or not np.array_equal(ref_valid, valid) \
                        or not np.array_equal(ref_label[valid], label[valid]):
                    raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: labels or valid frames differ "
                                     f"from run {names[0]!r}; runs compared must be scored on the same annotations")


def check_stats(stats: Mapping[str, Mapping[tuple[int, str], np.ndarray]]) -> tuple[tuple[int, ...], list[str]]:
    """(seeds, trials) shared by all runs; ValueError naming the run when keys differ, a seed
    lacks a trial, or the label statistics (n, sum y, sum y^2) differ from the first run's."""
    names = list(stats)
    first = stats[names[0]]
    keys = set(first)
    seeds = tuple(sorted({s for s, _ in keys}))
    trials = sorted({t for _, t in keys})
    holes = [(s, t) for s in seeds for t in trials if (s, t) not in keys]
    if holes:
        raise ValueError(f"run {names[0]!r}: {len(holes)} (seed, trial) without a prediction, e.g. {holes[:3]}; "
                         "every seed needs an out-of-fold prediction of every validation trial (a fold missing?)")
    for name in names:
        run = stats[name]
        if set(run) != keys:
            extra, missing = sorted(set(run) - keys), sorted(keys - set(run))
            raise ValueError(f"run {name!r} has other (seed, trial) keys than run {names[0]!r}: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")
        for key, value in run.items():
            label_stats, reference = value[:, [0, 2, 4]], first[key][:, [0, 2, 4]]
            if not np.allclose(label_stats, reference, rtol=1e-9, atol=1e-9):
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: labels or valid frames differ from "
                                 f"run {names[0]!r}; runs compared must be scored on the same annotations")
            if not np.isfinite(value).all():
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: non-finite value at a valid frame")
    return seeds, trials
