"""Paired cluster bootstrap over validation videos: how sure is a pooled CCC, and is one run
really better than another?

The statistic is the pooled CCC the ABAW challenge scores a set with: per seed, CCC over all
valid frames of all trials (per target), then the mean over seeds; "mean" is, per seed, the
mean of the valence and arousal CCCs, then the mean over seeds.

Frames of one video are strongly correlated (one person, one scene, one model error), and the
two trials of a two-person video share the video, so the resampling unit is the whole video:
a cluster bootstrap, which resamples whole clusters with replacement (Field & Welsh 2007,
"Bootstrapping clustered data", JRSS-B 69(3)). Resampling frames instead would treat
thousands of correlated frames as independent and give intervals far too narrow.

The resamples (V videos drawn with replacement out of V) are drawn once and shared by every
run, so the difference of two runs is paired: both are scored on the same resample, and the
variation both share (hard videos, label spread) cancels out of their difference.

- interval: the percentile interval (Efron & Tibshirani 1993, "An Introduction to the
  Bootstrap", ch. 13), the (1-c)/2 and (1+c)/2 quantiles of the resampled statistic;
- p-value of a difference: the percentile interval inverted (Efron & Tibshirani 1993, ch.
  15-16, tests from confidence intervals; the paired bootstrap of Koehn 2004 and
  Berg-Kirkpatrick et al. 2012 compares models on shared resamples the same way): twice the
  share of resampled differences on the far side of 0,
  p = min(1, 2 min((1 + #{d*_b <= 0}) / (B + 1), (1 + #{d*_b >= 0}) / (B + 1))), so that
  p < 1 - c exactly when the interval excludes 0 (the table's "resolved" and its p never
  disagree). The shift method of Hall & Wilson (1991), |d*_b - d| >= |d|, is as well
  calibrated here (tests/test_bootstrap.py) but can disagree with the percentile interval
  when the bootstrap distribution is skewed;
- resolved: the interval of the difference excludes 0, i.e. at this confidence the variation
  between videos does not account for the difference. It is one comparison's verdict; for a
  family of comparisons adjust the p-values (``holm``).

A resample whose statistic is NaN (no valid frame of a target among its videos, or both
series one identical constant) is dropped for that quantity (for a difference: when either
run's statistic is NaN); B is then the number kept. When more than half are NaN, the interval
and p-value are NaN: the bootstrap distribution would say more about what was dropped than
about the runs.

Speed: per (run, seed, video, target) only the sufficient statistics n, sum x, sum y, sum x^2,
sum y^2, sum xy over valid frames are kept; a resample is a vector of counts per video, its
sums are ``counts @ stats`` and its CCC follows from the sums.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)

TARGETS = ("valence", "arousal", "mean")

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


def video_index(trials: Sequence[str], videos: Mapping[str, str]) -> tuple[list[str], np.ndarray]:
    """(video names, sorted; index into them per trial): the trials of one video share an index,
    so they are always resampled together."""
    missing = [t for t in trials if t not in videos]
    if missing:
        raise ValueError(f"{len(missing)} trial(s) have no video: {', '.join(sorted(missing)[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    names = sorted({videos[t] for t in trials})
    position = {v: i for i, v in enumerate(names)}
    return names, np.array([position[videos[t]] for t in trials], dtype=np.intp)


def resample_counts(n_videos: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, V) int: how often each video is drawn in each resample (V draws with replacement,
    i.e. multinomial(V, 1/V); every row sums to V)."""
    draws = rng.integers(0, n_videos, size=(n_resamples, n_videos))
    offsets = np.arange(n_resamples)[:, None] * n_videos  # one bincount for all rows
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_videos).reshape(n_resamples, n_videos)


def trial_stats(prediction: np.ndarray, label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(2, 6): per target n, sum x, sum y, sum x^2, sum y^2, sum xy over the valid frames
    (x prediction, y label)."""
    w = valid.astype(np.float64)
    x = np.where(valid, prediction, 0.0)  # invalid frames may hold sentinels or NaN
    y = np.where(valid, label, 0.0)
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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the given order: controls the
    family-wise error over the comparisons made. NaN entries are passed through and not
    counted as comparisons."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    kept = np.flatnonzero(~np.isnan(p))
    order = kept[np.argsort(p[kept], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])  # step-down: never below a smaller p's
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


@dataclass(frozen=True)
class Estimate:
    """A statistic on the original sample with its percentile interval; for a difference also
    the p-value (the interval inverted) and whether the interval excludes 0."""
    estimate: float
    low: float
    high: float
    p_value: float = math.nan
    resolved: bool = False


class Bootstrap:
    """Build once for all runs, then query: scores and paired differences of pooled CCC.

    The runs must have exactly the same (seed, trial) keys (every seed with every trial) and
    identical labels, otherwise their scores are not comparable (ValueError naming the run and
    what differs). ``videos`` maps trial -> video; a trial missing from it is an error. The
    resamples (whole videos, with replacement, as many as there are) are drawn ONCE from
    ``seed`` and shared by all runs, so each difference is paired.
    """

    def __init__(self, runs: Mapping[str, RunPredictions], videos: Mapping[str, str], *, n_resamples: int = 10000,
                 confidence: float = 0.95, seed: int = 0):
        if not runs:
            raise ValueError("no run to bootstrap")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        runs = {name: {key: (np.asarray(p, np.float64), np.asarray(y, np.float64), np.asarray(v, bool))
                       for key, (p, y, v) in run.items()} for name, run in runs.items()}
        self._seeds, self._trials = _check_runs(runs)
        self._videos, self._trial_video = video_index(self._trials, videos)
        self._n_resamples = n_resamples
        self._confidence = confidence
        self._stats = {name: self._unit_stats(run) for name, run in runs.items()}  # the frames are not kept
        n_units = next(iter(self._stats.values())).shape[1]
        self._counts = resample_counts(n_units, n_resamples, np.random.default_rng(seed))
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # --- properties ----------------------------------------------------------------------------

    @property
    def n_videos(self) -> int:
        return len(self._videos)

    @property
    def n_resamples(self) -> int:
        return self._n_resamples

    @property
    def confidence(self) -> float:
        return self._confidence

    @property
    def seeds(self) -> tuple[int, ...]:
        return self._seeds

    @property
    def videos(self) -> tuple[str, ...]:
        """Video names, in the order of the columns of ``counts``."""
        return tuple(self._videos)

    @property
    def counts(self) -> np.ndarray:
        """(B, V) how often each video is drawn in each resample (read-only)."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    # --- queries -------------------------------------------------------------------------------

    def score(self, run: str, target: str) -> Estimate:
        """A run's pooled CCC with its percentile interval."""
        point, resampled = self._target(run, target)
        low, high = self._interval(self._kept(resampled, f"{run} {target}"))
        return Estimate(point, low, high)

    def difference(self, a: str, b: str, target: str) -> Estimate:
        """Pooled CCC of ``a`` minus that of ``b``, paired over the same resamples."""
        point_a, resampled_a = self._target(a, target)
        point_b, resampled_b = self._target(b, target)
        point = point_a - point_b
        kept = self._kept(resampled_a - resampled_b, f"{a} - {b} {target}")
        low, high = self._interval(kept)
        return Estimate(point, low, high, self._p_value(kept, point), bool(low > 0 or high < 0))

    def resampled(self, run: str, target: str) -> np.ndarray:
        """(B,) the run's statistic on each resample (NaN where undefined), e.g. to plot it."""
        return self._target(run, target)[1].copy()

    # --- steps ---------------------------------------------------------------------------------

    def _unit_stats(self, run: RunPredictions) -> np.ndarray:
        """(S, V, 2, 6) sufficient statistics per seed, video and target: the trials of a video
        are summed into one resampling unit."""
        out = np.zeros((len(self._seeds), len(self._videos), 2, N_STATS))
        for i, seed in enumerate(self._seeds):
            for trial, v in zip(self._trials, self._trial_video):
                out[i, v] += trial_stats(*run[seed, trial])
        return out

    def _ccc(self, run: str) -> tuple[np.ndarray, np.ndarray]:
        """(S, 2) CCC per seed and target on the original sample, (B, S, 2) on each resample."""
        if run not in self._cache:
            if run not in self._stats:
                raise KeyError(f"unknown run {run!r}; known: {', '.join(self._stats)}")
            stats = self._stats[run]
            point = ccc_from_sums(stats.sum(axis=1))
            sums = np.tensordot(self._counts.astype(np.float64), stats, axes=([1], [1]))  # (B, S, 2, 6)
            self._cache[run] = (point, ccc_from_sums(sums))
        return self._cache[run]

    def _target(self, run: str, target: str) -> tuple[float, np.ndarray]:
        """(statistic on the original sample, (B,) on each resample) for one target: per seed
        the target's CCC (for "mean" the mean of both), then the mean over seeds."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
        point, resampled = self._ccc(run)
        column = {"valence": slice(0, 1), "arousal": slice(1, 2), "mean": slice(0, 2)}[target]
        return float(point[:, column].mean()), resampled[:, :, column].mean(axis=(1, 2))

    def _kept(self, values: np.ndarray, label: str) -> np.ndarray | None:
        """The non-NaN resampled values, or None when more than half are NaN."""
        kept = values[~np.isnan(values)]
        dropped = len(values) - len(kept)
        if dropped:
            log.warning("%s: %d of %d resamples have no defined CCC and are dropped", label, dropped, len(values))
        return None if 2 * dropped > len(values) else kept

    def _interval(self, kept: np.ndarray | None) -> tuple[float, float]:
        if kept is None:
            return math.nan, math.nan
        alpha = 1 - self._confidence
        low, high = np.quantile(kept, [alpha / 2, 1 - alpha / 2])
        return float(low), float(high)

    def _p_value(self, kept: np.ndarray | None, point: float) -> float:
        """The percentile interval inverted: the smallest 1 - c whose interval would exclude 0,
        i.e. twice the share of resampled differences on the far side of 0 (two-sided)."""
        if kept is None or math.isnan(point):
            return math.nan
        below = (1 + np.count_nonzero(kept <= 0)) / (len(kept) + 1)
        above = (1 + np.count_nonzero(kept >= 0)) / (len(kept) + 1)
        return min(1.0, 2 * min(below, above))


def _check_runs(runs: Mapping[str, RunPredictions]) -> tuple[tuple[int, ...], list[str]]:
    """(seeds, trials) shared by all runs; ValueError naming the run when keys, shapes or labels
    differ, a seed lacks a trial, or a valid frame is not finite."""
    names = list(runs)
    first = runs[names[0]]
    keys = set(first)
    seeds = tuple(sorted({s for s, _ in keys}))
    trials = sorted({t for _, t in keys})
    holes = [(s, t) for s in seeds for t in trials if (s, t) not in keys]
    if holes:
        raise ValueError(f"run {names[0]!r}: {len(holes)} (seed, trial) without a prediction, e.g. {holes[:3]}; "
                         "every seed needs an out-of-fold prediction of every validation trial (a fold missing?)")
    for name in names:
        run = runs[name]
        if set(run) != keys:
            extra, missing = sorted(set(run) - keys), sorted(keys - set(run))
            raise ValueError(f"run {name!r} has other (seed, trial) keys than run {names[0]!r}: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})")
        for key, (prediction, label, valid) in run.items():
            if not prediction.shape == label.shape == valid.shape or prediction.ndim != 2 or prediction.shape[1] != 2:
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: prediction {prediction.shape}, "
                                 f"label {label.shape}, valid {valid.shape}; expected one (T, 2) shape")
            if not (np.isfinite(prediction[valid]).all() and np.isfinite(label[valid]).all()):
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: non-finite value at a valid frame")
            _, ref_label, ref_valid = first[key]
            if ref_valid.shape != valid.shape or not np.array_equal(ref_valid, valid) \
                    or not np.array_equal(ref_label[valid], label[valid]):
                raise ValueError(f"run {name!r}, seed {key[0]}, trial {key[1]!r}: labels or valid frames differ from "
                                 f"run {names[0]!r}; runs compared must be scored on the same annotations")
    return seeds, trials
