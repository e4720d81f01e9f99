"""Paired cluster bootstrap over validation videos (or subjects): how sure is a pooled CCC,
and is one run really better than another?

The statistic is the pooled CCC the ABAW challenge scores a set with: per seed, CCC over all
valid frames of all trials (per target), then the mean over seeds; "mean" is, per seed, the
mean of the valence and arousal CCCs, then the mean over seeds.

Frames of one video are strongly correlated (one person, one scene, one model error), and the
two trials of a two-person video share the video, so the resampling unit is the whole video,
or with a subject map (``learning.fold_groups``) the whole subject with all its videos: a
cluster bootstrap, which resamples whole clusters with replacement (Field & Welsh 2007,
"Bootstrapping clustered data", JRSS-B 69(3)). Resampling frames instead would treat
thousands of correlated frames as independent and give intervals far too narrow.

The resamples (V units drawn with replacement out of V) are drawn once and shared by every
run, so the difference of two runs is paired: both are scored on the same resample, and the
variation both share (hard videos, label spread) cancels out of their difference.

Three intervals (``method``), measured on simulated validation sets with strong per-video
correlation (benchmarks/bench_bootstrap.py; docs/benchmarks.md, "Bootstrap intervals"):

- ``expanded`` (the default): the percentile interval's draws expanded about the estimate,
  u_b = theta^ + k (theta*_b - theta^), k = ``small_cluster_factor(V, c)`` =
  sqrt(V/(V-1)) t_{V-1}(1-a/2) / z(1-a/2): the small-cluster correction of cluster-robust
  inference (the bootstrap's variance is (V-1)/V of the estimate's, and a spread estimated
  from V clusters leaves V-1 degrees of freedom). k is taken at the configured level, so
  p-values are exact at that level (p < a exactly when the interval excludes 0) and
  approximate at others.
- ``studentized``: the bootstrap-t interval (Efron & Tibshirani 1993, "An Introduction to
  the Bootstrap", ch. 12): t*_b = (theta*_b - theta^) / se*_b, u_b = theta^ - t*_b se, with
  the infinitesimal jackknife's standard errors over the resampled units (Efron 1982; the
  delta method on the per-unit sufficient statistics below): se^2 = sum_v c_v (g . z_v)^2,
  g the gradient of the statistic with respect to the pooled sums and z_v unit v's sums
  (g . sum = 0, as CCC is unchanged when every count is scaled).
- ``percentile``: u_b = theta*_b, the (1-c)/2 and (1+c)/2 quantiles of the resampled
  statistic (Efron & Tibshirani 1993, ch. 13): too narrow with few units (covered 0.89-0.91
  at 13 videos).

Both are read off one array of B "interval-scale" draws u_b (percentile: theta*_b;
studentised: theta^ - t*_b se), so that the interval, the p-value and "resolved" are one
computation:

- interval: the order statistics u_(j) and u_(B+1-j), j = ceil(a (B+1) / 2) - 1 (1-based;
  a = 1 - c), the (B+1)-convention quantiles;
- p-value of a difference (two-sided; the interval inverted: Efron & Tibshirani 1993, ch.
  15-16; the paired bootstrap of Koehn 2004 and Berg-Kirkpatrick et al. 2012 compares models
  on shared resamples the same way): p = min(1, 2 min((1 + #{u_b <= 0}) / (B + 1),
  (1 + #{u_b >= 0}) / (B + 1)));
- resolved: p < a, which is exactly when the interval above excludes 0 (tested at the
  boundary). It is one comparison's verdict; for a family of comparisons adjust the p-values
  (``holm``).

Seeds: the statistic averages the seeds, and the intervals are conditional on them (the
units are resampled, the trained models are not). How far another seed would move a
difference is ``seed_spread``: the standard deviation (ddof 1) over seeds of each run's
per-seed pooled CCC, combined over the two runs (sqrt(s_a^2 + s_b^2)); the report flags a
resolved difference smaller than it.

A resample whose statistic (or, studentised, its standard error) is NaN or zero is dropped
for that quantity (no valid frame of a target among its units, both series one identical
constant); B is then the number kept. When more than half are dropped, the interval and
p-value are NaN: the bootstrap distribution would say more about what was dropped than
about the runs.

Speed: per (run, seed, unit, target) only the sufficient statistics n, sum x, sum y, sum x^2,
sum y^2, sum xy over valid frames are kept; a resample is a vector of counts per unit, its
sums are ``counts @ stats``, its CCC and the CCC's gradient follow from the sums.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vafusion.learning.unit_stats import (N_STATS, as_stats, ccc_from_sums, ccc_gradient, check_predictions,
                                          check_stats)

log = logging.getLogger(__name__)

TARGETS = ("valence", "arousal", "mean")


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




METHODS = ("expanded", "studentized", "percentile")
# The fewest resampled units at which each method's 95 % interval kept its level on the
# simulated validation sets of benchmarks/bench_bootstrap.py (coverage of every target within
# 3 binomial standard errors of 0.95 or above it, null rejection at most 0.05 + 3 se, 1000
# replications; docs/benchmarks.md, "Bootstrap intervals"); below it the report warns.
LEVEL_HOLDS_FROM = {"expanded": 6, "studentized": 36, "percentile": 37}


def small_cluster_factor(n_units: int, confidence: float) -> float:
    """sqrt(V / (V - 1)) t_{V-1}(1 - a/2) / z(1 - a/2): how much wider an interval from V
    clusters must be than a normal one from the bootstrap's spread. The bootstrap's variance
    is (V - 1)/V of the plug-in estimate's, and a statistic standardised with a spread
    estimated from V clusters has V - 1 degrees of freedom: the G/(G - 1) factor and t(G - 1)
    critical values of cluster-robust inference (Cameron, Gelbach & Miller 2008, REStat
    90(3); Cameron & Miller 2015, J. Human Resources 50(2), sec. VI). 1.16 at 13 units,
    1.06 at 36, 1 in the limit; NaN below 2 units."""
    from scipy.stats import norm, t

    if n_units < 2:
        return math.nan
    a = 1 - confidence
    return math.sqrt(n_units / (n_units - 1)) * float(t.ppf(1 - a / 2, n_units - 1) / norm.ppf(1 - a / 2))


@dataclass(frozen=True)
class Estimate:
    """A statistic on the original sample with its interval; for a difference also the
    p-value (the interval inverted), whether the interval excludes 0 (p < 1 - confidence),
    and the seed spread of the difference (NaN with one seed)."""
    estimate: float
    low: float
    high: float
    p_value: float = math.nan
    resolved: bool = False
    seed_spread: float = math.nan

    @property
    def within_seed_spread(self) -> bool:
        """Resolved, yet smaller than the seed-to-seed spread: another seed could undo it."""
        return self.resolved and not math.isnan(self.seed_spread) and abs(self.estimate) < self.seed_spread


def verdict(draws: np.ndarray | None, confidence: float) -> tuple[float, float, float, bool]:
    """(low, high, p, resolved) from B interval-scale draws (module docstring): the interval's
    ends are the order statistics of ranks j and B + 1 - j, j = ceil(a (B + 1) / 2) - 1; p is
    the interval inverted; resolved is p < a, i.e. the interval excludes 0. NaN (and not
    resolved) without draws or with too few for the level (j < 1)."""
    if draws is None or len(draws) == 0:
        return math.nan, math.nan, math.nan, False
    alpha = 1 - confidence
    b = len(draws)
    below = (1 + np.count_nonzero(draws <= 0)) / (b + 1)
    above = (1 + np.count_nonzero(draws >= 0)) / (b + 1)
    p = min(1.0, 2 * min(below, above))
    j = math.ceil(round(alpha * (b + 1) / 2, 9)) - 1
    if j < 1:
        return math.nan, math.nan, p, False
    ordered = np.sort(draws)
    return float(ordered[j - 1]), float(ordered[b - j]), p, bool(p < alpha)


class Bootstrap:
    """Build once for all runs, then query: scores and paired differences of pooled CCC.

    ``runs``: {run: {(seed, trial): (prediction (T, 2), label (T, 2), valid (T, 2))}} or, for
    quantities scored elsewhere (the missing-audio curve's points), {(seed, trial): (2, 6)
    sufficient statistics}. The runs must have exactly the same (seed, trial) keys (every
    seed with every trial) and identical labels (for statistics: identical n, sum y and sum
    y^2), otherwise their scores are not comparable (ValueError naming the run and what
    differs). ``videos`` maps trial -> resampling unit (its video, or its subject group:
    ``folds.resampling_units``); a trial missing from it is an error. The resamples (whole
    units, with replacement, as many as there are) are drawn ONCE from ``seed`` and shared by
    all runs, so each difference is paired. ``method``: "expanded", "studentized" or
    "percentile" (module docstring).
    """

    def __init__(self, runs: Mapping[str, Mapping], videos: Mapping[str, str], *, n_resamples: int = 10000,
                 confidence: float = 0.95, seed: int = 0, method: str = "expanded"):
        if not runs:
            raise ValueError("no run to bootstrap")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if method not in METHODS:
            raise ValueError(f"unknown interval method {method!r}; one of {', '.join(METHODS)}")
        stats = {name: {key: as_stats(value) for key, value in run.items()} for name, run in runs.items()}
        check_predictions(runs)
        self._seeds, self._trials = check_stats(stats)
        self._videos, self._trial_video = video_index(self._trials, videos)
        self._n_resamples = n_resamples
        self._confidence = confidence
        self._method = method
        self._stats = {name: self._unit_stats(run) for name, run in stats.items()}  # the frames are not kept
        n_units = next(iter(self._stats.values())).shape[1]
        self._counts = resample_counts(n_units, n_resamples, np.random.default_rng(seed))
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def configured(cls, runs: Mapping[str, Mapping], units: Mapping[str, str], compare: dict | None) -> "Bootstrap":
        """With ``learning.compare``'s resamples, confidence, seed and method (None: the defaults)."""
        compare = compare or {}
        return cls(runs, units, n_resamples=compare.get("resamples", 10000), confidence=compare.get("confidence", 0.95),
                   seed=compare.get("seed", 0), method=compare.get("method", "expanded"))

    # --- properties ----------------------------------------------------------------------------

    @property
    def n_videos(self) -> int:
        """The number of resampling units (videos, or subject groups)."""
        return len(self._videos)

    @property
    def n_resamples(self) -> int:
        return self._n_resamples

    @property
    def confidence(self) -> float:
        return self._confidence

    @property
    def method(self) -> str:
        return self._method

    @property
    def seeds(self) -> tuple[int, ...]:
        return self._seeds

    @property
    def videos(self) -> tuple[str, ...]:
        """Unit names, in the order of the columns of ``counts``."""
        return tuple(self._videos)

    @property
    def counts(self) -> np.ndarray:
        """(B, V) how often each unit is drawn in each resample (read-only)."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    # --- queries -------------------------------------------------------------------------------

    def score(self, run: str, target: str) -> Estimate:
        """A run's pooled CCC with its interval (and its own seed spread)."""
        point, draws = self._draws({run: 1.0}, target, f"{run} {target}")
        low, high, _, _ = verdict(draws, self._confidence)
        return Estimate(point, low, high, seed_spread=self._seed_sd(run, target))

    def difference(self, a: str, b: str, target: str) -> Estimate:
        """Pooled CCC of ``a`` minus that of ``b``, paired over the same resamples."""
        point, draws = self._draws({a: 1.0, b: -1.0}, target, f"{a} - {b} {target}")
        low, high, p, resolved = verdict(draws, self._confidence)
        if math.isnan(point):
            p, resolved = math.nan, False
        spread = math.hypot(self._seed_sd(a, target), self._seed_sd(b, target))
        return Estimate(point, low, high, p, resolved, spread)

    def resampled(self, run: str, target: str) -> np.ndarray:
        """(B,) the run's statistic on each resample (NaN where undefined), e.g. to plot it."""
        return self._target(run, target)[1].copy()

    def per_seed(self, run: str, target: str) -> np.ndarray:
        """(S,) the run's pooled CCC of each seed on the original sample."""
        point = self._ccc(run)[0]
        return point[:, _COLUMNS[target]].mean(axis=1)

    # --- steps ---------------------------------------------------------------------------------

    def _unit_stats(self, run: Mapping[tuple[int, str], np.ndarray]) -> np.ndarray:
        """(S, V, 2, 6) sufficient statistics per seed, unit and target: the trials of a unit
        are summed into one resampling unit."""
        out = np.zeros((len(self._seeds), len(self._videos), 2, N_STATS))
        for i, seed in enumerate(self._seeds):
            for trial, v in zip(self._trials, self._trial_video):
                out[i, v] += run[seed, trial]
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
        column = _COLUMNS[target]
        return float(point[:, column].mean()), resampled[:, :, column].mean(axis=(1, 2))

    def _influence(self, weights: Mapping[str, float], target: str, counts: np.ndarray) -> np.ndarray:
        """(R, V): each unit's g . z_v for the statistic sum_r weight_r theta_r at the
        resamples ``counts`` (R, V) (the original sample: one row of ones)."""
        column = _COLUMNS[target]
        share = np.zeros(2)
        share[column] = 1.0 / (column.stop - column.start)
        out = 0.0
        for run, weight in weights.items():
            stats = self._stats[run]  # (S, V, 2, 6)
            sums = np.tensordot(counts.astype(np.float64), stats, axes=([1], [1]))  # (R, S, 2, 6)
            g = ccc_gradient(sums) * (weight * share / len(self._seeds))[None, None, :, None]
            out = out + np.einsum("rstk,svtk->rv", g, stats)
        return out

    def _se(self, weights: Mapping[str, float], target: str, counts: np.ndarray) -> np.ndarray:
        """(R,) the infinitesimal jackknife's standard error at each row of ``counts``."""
        influence = self._influence(weights, target, counts)
        return np.sqrt((counts * influence**2).sum(axis=1))

    def _draws(self, weights: Mapping[str, float], target: str, label: str) -> tuple[float, np.ndarray | None]:
        """(statistic, its B interval-scale draws) for sum_r weight_r theta_r (a run, or a
        difference of two); None where more than half the resamples are undefined."""
        point = sum(w * self._target(run, target)[0] for run, w in weights.items())
        resampled = sum(w * self._target(run, target)[1] for run, w in weights.items())
        if self._method == "percentile":
            return point, self._kept(resampled, label)
        if self._method == "expanded":
            factor = small_cluster_factor(self.n_videos, self._confidence)
            return point, self._kept(point + factor * (resampled - point), label)
        se = float(self._se(weights, target, np.ones((1, self.n_videos)))[0])
        se_star = np.concatenate([self._se(weights, target, self._counts[i:i + 2000])
                                  for i in range(0, self._n_resamples, 2000)])
        with np.errstate(divide="ignore", invalid="ignore"):
            t_star = np.where(se_star > 0, (resampled - point) / se_star, np.nan)
        if math.isnan(point) or not se > 0:
            return point, None
        return point, self._kept(point - t_star * se, label)

    def _seed_sd(self, run: str, target: str) -> float:
        values = self.per_seed(run, target)
        values = values[~np.isnan(values)]
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    def _kept(self, values: np.ndarray, label: str) -> np.ndarray | None:
        """The non-NaN resampled values, or None when more than half are NaN."""
        kept = values[~np.isnan(values)]
        dropped = len(values) - len(kept)
        if dropped:
            log.warning("%s: %d of %d resamples have no defined statistic and are dropped", label, dropped,
                        len(values))
        return None if 2 * dropped > len(values) else kept


_COLUMNS = {"valence": slice(0, 1), "arousal": slice(1, 2), "mean": slice(0, 2)}
