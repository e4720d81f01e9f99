"""The report's comparisons as pictures, drawn from the paired bootstrap
(``vafusion.learning.bootstrap``): a forest plot of every run's pooled CCC with its interval
per target, and the pairwise differences of the mean CCC as a matrix (colour: the
difference, row minus column; framed: resolved, the interval excludes 0)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vafusion.learning.bootstrap import Bootstrap  # noqa: E402
from vafusion.learning.figures import save  # noqa: E402

TARGETS = ("valence", "arousal", "mean")


def ranked(boot: Bootstrap, runs: list[str]) -> list[str]:
    """Best pooled mean CCC first (NaN last)."""
    def key(run: str) -> float:
        value = boot.score(run, "mean").estimate
        return -math.inf if math.isnan(value) else value

    return sorted(runs, key=key, reverse=True)


def plot_forest(boot: Bootstrap, runs: list[str], path: str | Path, optimistic: set[str] = frozenset()) -> None:
    """Every run's pooled CCC and its interval, one panel per target, best (by mean) on top;
    a run whose epochs were picked on the scored fold is drawn hollow and named so."""
    order = ranked(boot, runs)
    y = np.arange(len(order))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.35 * len(order) + 1.6), sharey=True)
    for ax, target in zip(axes, TARGETS):
        for yi, run in zip(y, order):
            e = boot.score(run, target)
            if math.isnan(e.estimate):
                continue
            hollow = run in optimistic
            ax.plot([e.low, e.high], [yi, yi], color="tab:blue", linewidth=2)
            ax.plot([e.estimate], [yi], "o", color="tab:blue", markerfacecolor="white" if hollow else "tab:blue")
        best = boot.score(order[0], target)
        if not math.isnan(best.low):
            ax.axvline(best.low, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{target}", fontsize=10)
        ax.set_xlabel(f"pooled CCC, {boot.confidence:.0%} interval")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [run + (" (optimistic)" if run in optimistic else "") for run in order], fontsize=8)
    fig.suptitle(f"Every model's pooled validation CCC ({boot.n_videos} validation units, {len(boot.seeds)} seed(s)); "
                 "dotted: the lower end of the best model's interval", fontsize=10)
    fig.tight_layout()
    save(fig, path)


def plot_difference_matrix(boot: Bootstrap, runs: list[str], path: str | Path, target: str = "mean") -> None:
    """Row minus column, pooled CCC of ``target`` (the mean of valence and arousal; the
    summary's pair table has each target); a resolved difference is framed, and its number
    (shown up to 16 runs) bold."""
    order = ranked(boot, runs)
    n = len(order)
    values, resolved = np.full((n, n), np.nan), np.zeros((n, n), bool)
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            if i != j:
                d = boot.difference(a, b, target)
                values[i, j], resolved[i, j] = d.estimate, d.resolved
    finite = values[np.isfinite(values)]
    limit = float(np.max(np.abs(finite))) if finite.size else 1.0
    side = 0.55 * n + 2.5
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
    for i, j in zip(*np.nonzero(resolved)):  # resolved: a black frame around the cell
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8))
    if n <= 16:  # the numbers fit
        for i in range(n):
            for j in range(n):
                if i != j and np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:+.2f}".replace("0.", "."), ha="center", va="center", fontsize=7,
                            color="white" if abs(values[i, j]) > 0.6 * limit else "black",
                            fontweight="bold" if resolved[i, j] else "normal")
    ax.set_xticks(range(n), order, rotation=50, ha="right", fontsize=8)
    ax.set_yticks(range(n), order, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.7, label=f"difference of pooled CCC ({target})")
    ax.set_title(f"Paired differences, {target} CCC: row minus column (blue: the row model is better);\n"
                 "framed and bold: resolved (its interval excludes 0, before Holm's adjustment)", fontsize=9)
    fig.tight_layout()
    save(fig, path)
