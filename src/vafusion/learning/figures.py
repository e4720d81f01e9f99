"""The report's figures, one PNG file each: the rules flag them for ``snakemake --report``
(captions in workflow/report/) and report.html embeds them.

Per model: training curves, CCC per validation trial, predicted against annotated (scatter
and traces) and, for IACA models, the gate weights over time and under missing audio.
Across models: CCC per fold, the missing-audio curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vafusion.learning.ccc import ccc  # noqa: E402
from vafusion.learning.results import (MISSING_SCOPES, TARGETS, Run, best_run, missing_audio_curve,  # noqa: E402
                                       missing_audio_fill, per_trial_ccc, stats, write_per_trial_csv)

# File stem -> title, in the order report.html shows a model's figures.
MODEL_FIGURES = {
    "training_curves": "training curves",
    "ccc_per_trial": "CCC per validation trial",
    "scatter": "predicted against annotated, every validation frame",
    "traces": "predicted and annotated over time, best fold",
    "gates_over_time": "IACA gate weights over time",
    "gates_missing_audio": "IACA gate weights under missing audio",
}
GATE_PARTS = ("audio", "visual", "joint")  # G_av0, G_av1, G_av2
GATE_COLORS = ("tab:orange", "tab:blue", "tab:green")


def save(fig, path: str | Path) -> None:
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_ccc_per_fold(rows: list[dict], path: str | Path) -> None:
    models = sorted({r["model"] for r in rows})
    folds = sorted({r["fold"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, target in zip(axes, TARGETS):
        for i, m in enumerate(models):
            values = [stats([r[f"ccc_{target}"] for r in rows if r["model"] == m and r["fold"] == f] or [np.nan])[0]
                      for f in folds]  # the mean over seeds
            ax.bar(np.array(folds) + i * width - 0.4 + width / 2, values, width, label=m)
        ax.set_title(f"validation CCC, {target}" + (" (mean over seeds)" if len({r.get("seed", 0) for r in rows}) > 1
                                                   else ""))
        ax.set_xlabel("fold")
        ax.set_xticks(folds)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].set_ylabel("CCC")
    axes[1].legend(fontsize=7, ncol=2)
    save(fig, path)


def plot_missing_audio(rows: list[dict], pattern: str, path: str | Path, boot=None) -> None:
    """CCC per target against the share of dropped audio frames, over all validation
    trials (top: the pooled CCC, with RJCA's and RJCA + IACA's intervals shaded when
    ``boot``, the bootstrap over the curves' points of ``comparisons.missing_audio_bootstrap``,
    is given; else the mean over folds) and the longest one (bottom, the paper's one-video variant, mean over folds);
    the paper's comparison, RJCA against RJCA + IACA, in bold. An IACA model whose gate is
    constant in some trainings says so in its legend entry."""
    from vafusion.learning.comparisons import constant_gates, curve_point

    models = sorted({r["model"] for r in rows if pattern in r.get("missing_audio", {})})
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    palette = plt.cm.tab10 if len(models) <= 10 else plt.cm.tab20
    colors = {m: palette(i % palette.N) for i, m in enumerate(models)}
    for row, (scope, scope_name) in enumerate(MISSING_SCOPES):
        pooled = boot is not None and scope == "all_trials"
        for col, target in enumerate(TARGETS):
            ax = axes[row, col]
            for m in models:
                shares, values = missing_audio_curve(rows, m, pattern, scope, target)
                x = [s * 100 for s in shares]
                paper = m.partition("@")[0] in ("rjca", "rjca_iaca")
                constant, total = constant_gates(rows, m)
                label = m + (f" (gate constant in {constant} of {total})" if constant else "")
                if pooled:
                    scores = [boot.score(curve_point(m, s), target) for s in shares]
                    values = [e.estimate for e in scores]
                    if paper:  # the paper's pair with its intervals; the others' are in the summary's table
                        ax.fill_between(x, [e.low for e in scores], [e.high for e in scores], color=colors[m],
                                        alpha=0.18, linewidth=0)
                ax.plot(x, values, marker="o", color=colors[m], label=label,
                        linewidth=2.5 if paper else 1.0, alpha=1.0 if paper else 0.6,
                        linestyle="--" if constant else "-")
            ax.set_title(f"{target}, {scope_name}", fontsize=10)
            ax.set_ylabel("pooled CCC (RJCA's intervals shaded)" if pooled else "CCC (mean over folds)")
            ax.axhline(0, color="black", linewidth=0.5)
    for ax in axes[1]:
        ax.set_xlabel(f"audio frames dropped ({pattern}), %")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside the data
    fig.suptitle(f"Missing audio, {pattern} frames dropped; a dropped frame gets {missing_audio_fill(rows)}",
                 fontsize=11)
    fig.tight_layout()
    save(fig, path)


def plot_training_curves(runs: list[Run], path: str | Path) -> None:
    """Training loss and validation CCC per epoch, one line per fold, the best epoch marked."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for i, run in enumerate(runs):
        color = plt.cm.tab10(i % 10)
        epochs = [int(r["epoch"]) for r in run.history]
        axes[0].plot(epochs, [float(r["train_loss"]) for r in run.history], color=color, label=f"fold {run.fold}")
        axes[1].plot(epochs, [float(r["val_ccc_mean"]) for r in run.history], color=color)
        inner = run.history and "inner_ccc_mean" in run.history[0]
        if inner:  # the curve that picked the epoch
            axes[1].plot(epochs, [float(r["inner_ccc_mean"]) for r in run.history], "--", color=color, linewidth=0.8)
        best = run.metrics.get("best_epoch")
        if best:
            axes[1].plot([best], [float(run.history[best - 1]["val_ccc_mean"])], "o", color=color)
    axes[0].set_title(f"{runs[0].model}: training loss (2 - CCC_v - CCC_a)")
    inner = any(r.history and "inner_ccc_mean" in r.history[0] for r in runs)
    axes[1].set_title("validation mean CCC" + (" (dashed: the inner split's, which picks the epoch)" if inner else "")
                      + "; dot: the epoch kept", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    save(fig, path)


def plot_ccc_per_trial(rows: list[dict], path: str | Path) -> None:
    """Each validation trial's CCC per target, trials sorted by their mean, coloured by fold."""
    order = sorted(rows, key=lambda r: np.nan_to_num(np.mean([r[f"ccc_{t}"] for t in TARGETS]), nan=-2))
    folds = sorted({r["fold"] for r in rows})
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(folds)}
    named = len(order) <= 40  # trial names fit on the axis
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.22 * len(order) + 1.2) if named else 4.5), sharey=True)
    y = np.arange(len(order))
    for ax, target in zip(axes, TARGETS):
        values = np.array([r[f"ccc_{target}"] for r in order])
        for f in folds:
            mine = np.array([r["fold"] == f for r in order])
            ax.scatter(values[mine], y[mine], s=14, color=colors[f], label=f"fold {f}")
        median = float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan
        ax.axvline(0, color="black", linewidth=0.5)
        if not math.isnan(median):
            ax.axvline(median, color="grey", linestyle="--", linewidth=1, label=f"median {median:.3f}")
        ax.set_xlim(-1, 1)
        ax.set_title(f"{rows[0]['model']}: CCC per validation trial, {target}", fontsize=10)
        ax.set_xlabel("CCC")
    if named:
        axes[0].set_yticks(y, [r["trial"] for r in order], fontsize=7)
    else:
        axes[0].set_ylabel("validation trials, sorted by mean CCC")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save(fig, path)


def plot_scatter(runs: list[Run], path: str | Path) -> None:
    """Predicted against annotated value of every valid validation frame of every fold, as a
    2-D histogram (log counts), with the identity line and the pooled CCC."""
    pred, true = {t: [] for t in TARGETS}, {t: [] for t in TARGETS}
    for run in runs:
        with h5py.File(run.predictions) as h5:
            for trial in h5:
                p, label, valid = h5[trial]["prediction"][:], h5[trial]["label"][:], h5[trial]["valid"][:]
                for j, target in enumerate(TARGETS):
                    pred[target].append(p[valid[:, j], j])
                    true[target].append(label[valid[:, j], j])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, target in zip(axes, TARGETS):
        x, y = np.concatenate(true[target]), np.concatenate(pred[target])
        if len(x):
            hexes = ax.hexbin(x, y, gridsize=40, extent=(-1, 1, -1, 1), bins="log", mincnt=1, cmap="viridis")
            fig.colorbar(hexes, ax=ax, label="frames")
        ax.plot([-1, 1], [-1, 1], color="black", linestyle="--", linewidth=1)
        score = ccc(y, x) if len(x) else math.nan
        ax.set_title(f"{runs[0].model}, {target}: {len(x)} frames, CCC {score:.3f}", fontsize=10)
        ax.set_xlabel("annotated")
        ax.set_ylabel("predicted")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    fig.tight_layout()
    save(fig, path)


def plot_traces(run: Run, path: str | Path, max_trials: int = 3) -> None:
    """The run's longest validation trials: annotation (gaps where -5) and prediction."""
    with h5py.File(run.predictions) as h5:
        names = sorted(h5, key=lambda n: (-len(h5[n]["prediction"]), n))[:max_trials]
        fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.2 * len(names) + 0.4), squeeze=False)
        for row, name in enumerate(names):
            pred, label, valid = h5[name]["prediction"][:], h5[name]["label"][:], h5[name]["valid"][:]
            for j, target in enumerate(TARGETS):
                ax = axes[row, j]
                ax.plot(np.where(valid[:, j], label[:, j], np.nan), color="black", label="annotation")
                ax.plot(pred[:, j], color="tab:red", label="prediction")
                ax.set_ylim(-1.05, 1.05)
                ax.set_title(f"{name}: {target}", fontsize=9)
        axes[-1, 0].set_xlabel("frame")
        axes[0, 1].legend(fontsize=7)
    fig.suptitle(f"{run.model}, fold {run.fold} (best mean CCC {run.metrics['ccc_mean']:.3f})")
    fig.tight_layout()
    save(fig, path)


def _stack_gates(ax, fusion: np.ndarray) -> None:
    """G_av0..2 (T, 3) as stacked areas: they sum to 1 on every frame."""
    ax.stackplot(np.arange(len(fusion)), fusion.T, colors=GATE_COLORS, alpha=0.8,
                 labels=[f"G_av{k}: {part}" for k, part in enumerate(GATE_PARTS)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("stage 2 weight")


def gate_run(runs: list[Run]) -> Run:
    """The run whose gates are shown over time: fold 0 (the official split) when present."""
    return next((r for r in runs if r.fold == 0), runs[0])


def plot_gates_over_time(runs: list[Run], path: str | Path) -> None:
    """The longest validation trial of fold 0: annotation and prediction, the stage-2 gate
    G_av (audio, visual, joint) and the stage-1 gates' cross-attended weights G_a1, G_v1."""
    run = gate_run(runs)
    trial = run.metrics.get("missing_audio", {}).get("longest_trial")
    with h5py.File(run.predictions) as h5:
        trial = trial if trial in h5 else max(h5, key=lambda n: len(h5[n]["prediction"]))
        pred, label, valid = h5[trial]["prediction"][:], h5[trial]["label"][:], h5[trial]["valid"][:]
        gates = h5[trial]["gates"][:]
    fig, axes = plt.subplots(3, 1, figsize=(12, 7.5), sharex=True)
    for j, (target, color) in enumerate(zip(TARGETS, ("tab:red", "tab:purple"))):
        axes[0].plot(np.where(valid[:, j], label[:, j], np.nan), color=color, linewidth=1, alpha=0.5,
                     label=f"{target}, annotated")
        axes[0].plot(pred[:, j], color=color, linewidth=1.5, label=f"{target}, predicted")
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=7, ncol=4)
    axes[0].set_title(f"{run.model}, fold {run.fold}, {trial}", fontsize=10)
    _stack_gates(axes[1], gates[:, 4:7])
    axes[1].legend(fontsize=7, loc="upper right")
    axes[2].plot(gates[:, 1], color=GATE_COLORS[0], label="G_a1: audio takes its cross-attended features")
    axes[2].plot(gates[:, 3], color=GATE_COLORS[1], label="G_v1: visual takes its cross-attended features")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_ylabel("stage 1 weight")
    axes[2].set_xlabel("frame")
    axes[2].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save(fig, path)


def plot_gates_missing_audio(runs: list[Run], path: str | Path) -> None:
    """Top: the mean stage-2 weights on the dropped audio frames (solid) and on the kept ones
    (dotted) against the share of dropped audio, mean over folds, one panel per pattern.
    Bottom: fold 0's longest trial at the largest share, the dropped frames shaded. The
    titles name the fill the dropped frames got."""
    fill = missing_audio_fill([r.metrics for r in runs])
    patterns = [p for p in ("contiguous", "scattered")
                if any("gates" in r.metrics.get("missing_audio", {}).get(p, {}) for r in runs)]
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, max(1, len(patterns)))
    for col, pattern in enumerate(patterns):
        ax = fig.add_subplot(grid[0, col])
        per_fold = [r.metrics["missing_audio"][pattern]["gates"] for r in runs
                    if "gates" in r.metrics.get("missing_audio", {}).get(pattern, {})]
        shares = sorted(per_fold[0], key=float)
        for part, style in (("dropped", "-"), ("kept", ":")):
            for k, (name, color) in enumerate(zip(GATE_PARTS, GATE_COLORS)):
                values = [stats([f[s][part][k] if f[s][part] is not None else math.nan for f in per_fold])[0]
                          for s in shares]
                ax.plot([float(s) * 100 for s in shares], values, style, marker="o", color=color,
                        label=f"G_av{k} {name}, {part} frames")
        ax.set_ylim(0, 1)
        ax.set_title(f"{runs[0].model}: mean stage-2 weight, {pattern} audio frames dropped", fontsize=10)
        ax.set_xlabel(f"audio frames dropped (given {fill}), %")
        ax.set_ylabel("weight (mean over folds)")
        if col == 0:
            ax.legend(fontsize=6, ncol=2)
    run = gate_run(runs)
    trial = run.metrics.get("missing_audio", {}).get("longest_trial")
    with h5py.File(run.predictions) as h5:
        stored = [p for p in patterns if trial in h5 and f"gates_missing_audio_{p}" in h5[trial]]
        if stored:
            pattern = stored[0]
            trace = h5[trial][f"gates_missing_audio_{pattern}"]
            gates, share, dropped = trace[:], float(trace.attrs["share"]), h5[trial][f"dropped_{pattern}"][:]
            ax = fig.add_subplot(grid[1, :])
            _stack_gates(ax, gates[:, 4:7])
            ax.fill_between(np.arange(len(dropped)), 0, 1, where=dropped, step="mid", color="black", alpha=0.25,
                            label="audio dropped")
            ax.set_title(f"fold {run.fold}, {trial}: {share * 100:.0f} % of the audio frames dropped ({pattern}), "
                         f"given {fill}",
                         fontsize=10)
            ax.set_xlabel("frame")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save(fig, path)


def model_figures(runs: list[Run], out: dict[str, str | Path]) -> None:
    """Write the figures of one model's runs that ``out`` names (MODEL_FIGURES stems -> paths;
    "ccc_per_trial_csv": the per-trial CCC table): rule plot_model asks for the first four,
    rule plot_gates for the gate figures of an IACA model. With several seeds the figures show
    the first seed's trainings (one line per fold stays readable); the table has every seed."""
    every_seed = sorted(runs, key=lambda r: (r.seed, r.fold))
    runs = [r for r in every_seed if r.seed == every_seed[0].seed]
    trial_rows = per_trial_ccc(every_seed) if {"ccc_per_trial", "ccc_per_trial_csv"} & set(out) else []
    writers = {
        "training_curves": lambda path: plot_training_curves(runs, path),
        "ccc_per_trial_csv": lambda path: write_per_trial_csv(trial_rows, path),
        "ccc_per_trial": lambda path: plot_ccc_per_trial([r for r in trial_rows if r["seed"] == runs[0].seed], path),
        "scatter": lambda path: plot_scatter(runs, path),
        "traces": lambda path: plot_traces(best_run(runs), path),
        "gates_over_time": lambda path: plot_gates_over_time(runs, path),
        "gates_missing_audio": lambda path: plot_gates_missing_audio(runs, path),
    }
    for name, path in out.items():
        writers[name](path)
