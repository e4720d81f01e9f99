"""Reports: CCC per fold, model and target as CSV, a Markdown summary, and one
self-contained HTML page with the plots (PNG embedded as base64)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import warnings
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TARGETS = ("valence", "arousal")
COLUMNS = ("model", "fold", "ccc_valence", "ccc_arousal", "ccc_mean")


def load_metrics(paths: list[str | Path]) -> list[dict]:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    return sorted(rows, key=lambda r: (r["model"], r["fold"]))


def _stats(values: list[float]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: reported as NaN
        return float(np.nanmean(values)), float(np.nanstd(values))


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "NaN"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def write_ccc_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r["model"], r["fold"]] + [f"{r[c]:.6f}" for c in COLUMNS[2:]])


def summary_markdown(rows: list[dict]) -> str:
    models = sorted({r["model"] for r in rows})
    lines = ["# Validation CCC per model (mean ± std over folds)", "",
             "| model | folds | valence | arousal | mean | best fold (mean CCC) | windows/s |",
             "|---|---|---|---|---|---|---|"]
    means = {}
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        stats = {c: _stats([r[c] for r in mine]) for c in COLUMNS[2:]}
        means[m] = stats
        scored = [r for r in mine if not math.isnan(r["ccc_mean"])]
        best = max(scored, key=lambda r: r["ccc_mean"]) if scored else None
        best_txt = f"{best['fold']} ({best['ccc_mean']:.3f})" if best else "-"
        speed = _stats([r.get("windows_per_s", math.nan) for r in mine])[0]
        lines.append(f"| {m} | {len(mine)} | {_fmt(*stats['ccc_valence'])} | {_fmt(*stats['ccc_arousal'])} | "
                     f"{_fmt(*stats['ccc_mean'])} | {best_txt} | {speed:.1f} |")
    pairs = [(m, f"{m}_iaca") for m in ("ca", "jca", "rjca", "tca") if m in models and f"{m}_iaca" in models]
    if pairs:
        lines += ["", "## With and without the IACA gate", "",
                  "| attention | target | without IACA | with IACA | difference |", "|---|---|---|---|---|"]
        for base, gated in pairs:
            for c in COLUMNS[2:]:
                a, b = means[base][c][0], means[gated][c][0]
                lines.append(f"| {base} | {c.removeprefix('ccc_')} | {_fmt(a)} | {_fmt(b)} | {b - a:+.3f} |")
    lines += missing_audio_markdown(rows)
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plot_ccc_per_fold(rows: list[dict]) -> str:
    models = sorted({r["model"] for r in rows})
    folds = sorted({r["fold"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, target in zip(axes, TARGETS):
        for i, m in enumerate(models):
            values = [next((r[f"ccc_{target}"] for r in rows if r["model"] == m and r["fold"] == f), np.nan) for f in folds]
            ax.bar(np.array(folds) + i * width - 0.4 + width / 2, values, width, label=m)
        ax.set_title(f"validation CCC, {target}")
        ax.set_xlabel("fold")
        ax.set_xticks(folds)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].set_ylabel("CCC")
    axes[1].legend(fontsize=7, ncol=2)
    return _png(fig)


def plot_traces(prediction_file: str | Path, title: str, max_trials: int = 3) -> str:
    with h5py.File(prediction_file) as h5:
        names = sorted(h5)[:max_trials]
        fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.2 * len(names)), squeeze=False)
        for row, name in enumerate(names):
            pred, label, valid = h5[name]["prediction"][:], h5[name]["label"][:], h5[name]["valid"][:]
            for j, target in enumerate(TARGETS):
                ax = axes[row, j]
                truth = np.where(valid[:, j], label[:, j], np.nan)  # -5 frames are gaps
                ax.plot(truth, color="black", label="annotation")
                ax.plot(pred[:, j], color="tab:red", label="prediction")
                ax.set_ylim(-1.05, 1.05)
                ax.set_title(f"{name}: {target}", fontsize=9)
        axes[0, 1].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
    return _png(fig)


def plot_training_curves(histories: dict[tuple[str, int], list[dict]]) -> str:
    models = sorted({m for m, _ in histories})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for (m, fold), rows in sorted(histories.items()):
        epochs = [int(r["epoch"]) for r in rows]
        label = m if fold == min(f for mm, f in histories if mm == m) else None
        axes[0].plot(epochs, [float(r["train_loss"]) for r in rows], color=colors[m], alpha=0.6, label=label)
        axes[1].plot(epochs, [float(r["val_ccc_mean"]) for r in rows], color=colors[m], alpha=0.6, label=label)
    axes[0].set_title("training loss (2 - CCC_v - CCC_a), one line per fold")
    axes[1].set_title("validation mean CCC, one line per fold")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    return _png(fig)


MISSING_SCOPES = (("all_trials", "all validation trials"), ("longest_trial", "longest validation trial"))


def missing_audio_patterns(rows: list[dict]) -> list[str]:
    return [p for p in ("contiguous", "scattered") if any(p in r.get("missing_audio", {}) for r in rows)]


def missing_audio_curve(rows: list[dict], model: str, pattern: str, scope: str,
                        target: str) -> tuple[list[float], list[float]]:
    """(shares, CCC of ``target`` averaged over the model's folds) for one pattern and scope."""
    mine = [r["missing_audio"][pattern][scope] for r in rows
            if r["model"] == model and pattern in r.get("missing_audio", {})]
    shares = list(mine[0]) if mine else []
    return [float(s) for s in shares], [_stats([m[s][f"ccc_{target}"] for m in mine])[0] for s in shares]


def missing_audio_markdown(rows: list[dict]) -> list[str]:
    """Praveen & Alam's missing-audio test: CCC per target, mean over folds."""
    lines = []
    models = sorted({r["model"] for r in rows})
    for pattern in missing_audio_patterns(rows):
        for scope, scope_name in MISSING_SCOPES:
            shares = missing_audio_curve(rows, models[0], pattern, scope, "valence")[0]
            lines += ["", f"## Missing audio ({pattern} frames replaced by silence), {scope_name}: "
                          "CCC valence / arousal, mean over folds", "",
                      "| model | " + " | ".join(f"{s * 100:.0f} %" for s in shares) + " |",
                      "|---|" + "---|" * len(shares)]
            for m in models:
                curves = [missing_audio_curve(rows, m, pattern, scope, t)[1] for t in TARGETS]
                cells = [f"{_fmt(v)} / {_fmt(a)}" for v, a in zip(*curves)]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def plot_missing_audio(rows: list[dict], pattern: str) -> str:
    """CCC per target against the share of silenced audio frames, over all validation
    trials (top) and the longest one (bottom, the paper's one-video variant); the paper's
    comparison, RJCA against RJCA + IACA, in bold."""
    models = sorted({r["model"] for r in rows if pattern in r.get("missing_audio", {})})
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for row, (scope, scope_name) in enumerate(MISSING_SCOPES):
        for col, target in enumerate(TARGETS):
            ax = axes[row, col]
            for m in models:
                shares, values = missing_audio_curve(rows, m, pattern, scope, target)
                paper = m in ("rjca", "rjca_iaca")
                ax.plot([s * 100 for s in shares], values, marker="o", color=colors[m], label=m,
                        linewidth=2.5 if paper else 1.0, alpha=1.0 if paper else 0.6)
            ax.set_title(f"{target}, {scope_name}", fontsize=10)
            ax.set_ylabel("CCC (mean over folds)")
            ax.axhline(0, color="black", linewidth=0.5)
    for ax in axes[1]:
        ax.set_xlabel(f"audio frames replaced by silence ({pattern}), %")
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def markdown_to_html(markdown: str) -> str:
    """The summary's Markdown (headings, pipe tables, paragraphs) as HTML: real tables."""
    out, table = [], []

    def close_table() -> None:
        if table:
            head, *body = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in table
                           if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        close_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level + 1}>{html.escape(line.lstrip('#').strip())}</h{level + 1}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    close_table()
    return "\n".join(out)


def provenance_html(weights: dict[str, str | None], rows: list[dict]) -> str:
    """What the figures stand on: each network's weights (RANDOM-INIT in red when none was
    given), the devices the runs used and why, package versions, counts."""
    import torch

    import vafusion

    items = []
    for network, path in weights.items():
        if path is None and network == "vggish_pca":
            items.append("<li>vggish_pca: not used (features.vggish.pca: false)</li>")
        elif path is None:
            items.append(f"<li>{html.escape(network)}: <b style='color:#c00'>RANDOM-INIT</b> (no weights file: "
                         "these features are not pretrained embeddings)</li>")
        else:
            items.append(f"<li>{html.escape(network)}: {html.escape(str(path))} (sha256 in each feature file)</li>")
    devices = sorted({": ".join(filter(None, (r.get("device", "?"), r.get("cuda_status")))) for r in rows})
    items += [f"<li>training device: {html.escape(d)}</li>" for d in devices]
    items.append(f"<li>vafusion {html.escape(vafusion.__version__)}, torch {html.escape(torch.__version__)}</li>")
    models = sorted({r["model"] for r in rows})
    items.append(f"<li>{len(models)} models x {len({r['fold'] for r in rows})} folds = {len(rows)} runs</li>")
    return "<h2>Provenance</h2><ul>" + "".join(items) + "</ul>"


def write_reports(metrics_files: list[str | Path], history_files: list[str | Path],
                  prediction_files: list[str | Path], out_csv: str | Path, out_md: str | Path,
                  out_html: str | Path, weights: dict[str, str | None] | None = None) -> None:
    """``history_files`` and ``prediction_files`` are parallel to ``metrics_files``;
    ``weights``: config.yaml's weights section (None: not known)."""
    rows = load_metrics(metrics_files)
    write_ccc_csv(rows, out_csv)
    markdown = summary_markdown(rows)
    Path(out_md).write_text(markdown)
    by_run = {}
    for metrics, history, preds in zip(metrics_files, history_files, prediction_files):
        info = json.loads(Path(metrics).read_text())
        with open(history, newline="") as fh:
            by_run[(info["model"], info["fold"])] = (list(csv.DictReader(fh)), preds, info)
    best = max((r for r in rows if not math.isnan(r["ccc_mean"])), key=lambda r: r["ccc_mean"], default=rows[0])
    figures = [
        ("CCC per fold and model", plot_ccc_per_fold(rows)),
        (f"Predicted vs annotated, {best['model']} fold {best['fold']} (best run)",
         plot_traces(by_run[(best["model"], best["fold"])][1], f"{best['model']}, fold {best['fold']}")),
        ("Training curves", plot_training_curves({k: v[0] for k, v in by_run.items()})),
    ] + [(f"Missing audio, {pattern} frames: RJCA vs RJCA + IACA (Praveen & Alam, Fig. 3)",
          plot_missing_audio(rows, pattern)) for pattern in missing_audio_patterns(rows)]
    body = [f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>" for title, data in figures]
    head = provenance_html(weights, rows) if weights is not None else ""
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>vafusion report</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;"
            "text-align:right}td:first-child,th:first-child{text-align:left}</style></head>"
            "<body><h1>vafusion: valence/arousal validation report</h1>" + head + markdown_to_html(markdown)
            + "".join(body) + "</body></html>")
    Path(out_html).write_text(page)
