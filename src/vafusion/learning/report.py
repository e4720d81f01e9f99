"""Reports: CCC per fold, model and target as CSV, a Markdown summary, the provenance of
the run (the first page of ``snakemake --report``, as reStructuredText) and one
self-contained HTML page with the same provenance, the tables and every figure (PNG
embedded as base64)."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import math
import platform
import sys
from importlib import metadata
from pathlib import Path

import yaml

from vafusion.learning.bootstrap import Bootstrap
from vafusion.learning.comparison_figures import plot_difference_matrix, plot_forest
from vafusion.learning.comparisons import (ALARM, ensembles_markdown, experiments_markdown, fmt, gates_markdown,
                                           iaca_markdown, missing_audio_bootstrap, missing_audio_markdown,
                                           models_markdown, optimistic_runs, oracle_gap_markdown, pairs_markdown,
                                           refit_markdown, seed_spread, selection_line)
from vafusion.learning.figures import MODEL_FIGURES, plot_ccc_per_fold
from vafusion.learning.folds import resampling_units
from vafusion.learning.results import (FILL_NAMES, TARGETS, missing_audio_fill, missing_audio_patterns, read_metrics,
                                      stats, trained, unscored)
from vafusion.learning.streams import DEFAULT_SET, split_run
from vafusion.learning.unit_stats import load_predictions
from vafusion.weights import RANDOM_INIT, sha256sum

COLUMNS = ("model", "seed", "fold", "ccc_valence", "ccc_arousal", "ccc_mean")
PACKAGES = ("vafusion", "torch", "torchaudio", "torchvision", "numpy", "h5py", "snakemake")


def write_ccc_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r["model"], r.get("seed", 0), r["fold"]] + [f"{r[c]:.6f}" for c in COLUMNS[3:]])


def summary_markdown(rows: list[dict], boot: Bootstrap | None = None, variants: dict[str, dict] | None = None,
                     missing_boots: dict[str, Bootstrap | None] | None = None, unit: str = "videos") -> str:
    """The tables of the report. ``boot``: the paired bootstrap over the runs' validation
    predictions (None: the tables that need it are left out); ``variants``: the runs that
    vary a listed model (name -> {"model", "stream_set", "changes"}); ``missing_boots``: per
    missing-audio pattern, the bootstrap over the curves' points (``missing_audio_bootstrap``);
    ``unit``: what the bootstrap resamples ("videos" or "subjects")."""
    models = sorted({r["model"] for r in rows})
    seeds = sorted({r.get("seed", 0) for r in rows})
    optimistic = optimistic_runs(rows)
    lines = ["# Validation CCC per model (mean ± std over folds and seeds)", "",
             selection_line(rows), "",
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}). Seed spread: the std (ddof 1) over seeds of the "
             "mean CCC over folds, how far retraining with another seed moves a model (- with one seed). A difference "
             "between models smaller than this is noise.", "",
             "| model | trainings | valence | arousal | mean | seed spread (mean) | best fold (mean CCC) | windows/s |",
             "|---|---|---|---|---|---|---|---|"]
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        scores = {c: stats([r[c] for r in mine]) for c in COLUMNS[3:]}
        scored = [r for r in mine if not math.isnan(r["ccc_mean"])]
        best = max(scored, key=lambda r: r["ccc_mean"]) if scored else None
        best_txt = f"{best['fold']} ({best['ccc_mean']:.3f})" if best else "-"
        spread = seed_spread(rows, m)
        speed = stats([r.get("windows_per_s", math.nan) for r in mine])[0]
        trainings = len(mine) if trained(mine[0]) else f"0 ({'ensemble' if 'ensemble' in mine[0] else 'baseline'})"
        lines.append(f"| {m} | {trainings} | {fmt(*scores['ccc_valence'])} | {fmt(*scores['ccc_arousal'])} | "
                     f"{fmt(*scores['ccc_mean'])} | {'-' if math.isnan(spread) else f'{spread:.3f}'} | {best_txt} | "
                     f"{'-' if math.isnan(speed) else f'{speed:.1f}'} |")
    baselines = {r["model"]: r["baseline"]["what"] for r in rows if "baseline" in r}
    if baselines:
        lines += ["", "Zero-training baselines (nothing trained, scored on the same validation frames):", ""]
        lines += [f"- {m}: {what}" for m, what in sorted(baselines.items())]
    missing = unscored(rows)
    if missing:
        lines += ["", "Folds without a score for a target (their CCC is NaN; the means above leave them out):",
                  ""] + [f"- {line}" for line in missing]
    if boot is not None:
        lines += models_markdown(boot, models, optimistic, unit)
    lines += iaca_markdown(rows, boot)
    lines += gates_markdown(rows)
    if boot is not None:
        lines += experiments_markdown(boot, variants or {}, models, optimistic)
        lines += ensembles_markdown(rows, boot)
        lines += pairs_markdown(boot, models, optimistic)
    lines += oracle_gap_markdown(rows)
    lines += refit_markdown(rows)
    runs = [r for r in rows if trained(r)]
    lines += stream_set_markdown(runs, variants)
    if missing_audio_patterns(runs):
        lines += missing_audio_markdown(runs, missing_audio_fill(runs), missing_boots or {})
    return "\n".join(lines) + "\n"


def _streams_text(streams: dict | None) -> str:
    if not streams:
        return "(not recorded)"
    return f"audio {' + '.join(streams['audio'])}; visual {' + '.join(streams['visual'])}"


def _neutralised(rows: list[dict]) -> str:
    """'vggish 56 of 128, mfcc 0' (mean over the trainings that recorded it)."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        for stream, n in (r.get("normaliser_neutralised_dims") or r.get("normaliser_constant_dims") or {}).items():
            counts.setdefault(stream, []).append(n)
    if not counts:
        return "(not recorded)"
    return ", ".join(f"{stream} {stats(ns)[0]:.3g}" for stream, ns in counts.items())


def stream_set_markdown(rows: list[dict], variants: dict[str, dict] | None = None) -> list[str]:
    """Which streams each run fused and, for every fusion model trained on several stream
    sets, the sets side by side: CCC mean ± std over folds, and the per-fold difference to
    the default set (paired by fold: the same validation trials)."""
    runs = sorted({r["model"] for r in rows})
    lines = ["", "## Feature streams of each model", "",
             "Neutralised: the feature dimensions that were constant over a training's frames (one value, or a spread "
             "below a millionth of their size), read as 0 by that model; per stream, the mean over trainings.", "",
             "| model | fusion model | stream set | streams | neutralised dimensions |", "|---|---|---|---|---|"]
    for run in runs:
        model, stream_set = split_run(run)
        if run in (variants or {}):  # an experiment: its own fusion model and stream set
            model, stream_set = variants[run]["model"], variants[run]["stream_set"]
        mine = [r for r in rows if r["model"] == run]
        streams = next((r.get("streams") for r in mine), None)
        lines.append(f"| {run} | {model} | {stream_set} | {_streams_text(streams)} | {_neutralised(mine)} |")
    by_model: dict[str, list[str]] = {}
    for run in runs:
        by_model.setdefault(split_run(run)[0], []).append(run)
    compared = {m: sorted(rs, key=lambda r: split_run(r)[1] != DEFAULT_SET) for m, rs in by_model.items() if len(rs) > 1}
    if not compared:
        return lines
    lines += ["", "## Stream sets compared (same fusion model, same folds and seeds)", "",
              "CCC mean ± std over folds and seeds; the difference to the first set is taken per fold and seed (the "
              "same validation trials and seed) and given as mean ± std; its interval and p-value are in the paired "
              "comparisons above.", "",
              "| fusion model | stream set | target | CCC | minus the first set | trainings |", "|---|---|---|---|---|---|"]
    for model, rs in compared.items():
        base = {(r.get("seed", 0), r["fold"]): r for r in rows if r["model"] == rs[0]}
        for run in rs:
            mine = {(r.get("seed", 0), r["fold"]): r for r in rows if r["model"] == run}
            for c in COLUMNS[3:]:
                cell = fmt(*stats([r[c] for r in mine.values()]))
                if run == rs[0]:
                    diff = "-"
                else:
                    paired = [mine[k][c] - base[k][c] for k in sorted(set(mine) & set(base))]
                    diff = fmt(*stats(paired), signed=True)
                lines.append(f"| {model} | {split_run(run)[1]} | {c.removeprefix('ccc_')} | {cell} | {diff} | "
                             f"{len(mine)} |")
    return lines


def _cell(text: str) -> str:
    """A table cell; one that starts with ALARM (already escaped) in red."""
    alarm = html.escape(ALARM)
    if text.startswith(alarm):
        return f"<td class='alarm'>{text[len(alarm):]}</td>"
    return f"<td>{text}</td>"


def markdown_to_html(markdown: str) -> str:
    """The summary's Markdown (headings, pipe tables, paragraphs) as HTML: real tables."""
    out, table = [], []

    def close_table() -> None:
        if table:
            head, *body = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in table
                           if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in body)
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
        elif line.startswith(ALARM):
            out.append(f"<p class='alarm'>{html.escape(line[len(ALARM):])}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    close_table()
    return "\n".join(out)


# --- provenance --------------------------------------------------------------------------------

def provenance(weights: dict[str, dict[str, str | None]], config: dict, counts: dict[str, int],
               rows: list[dict]) -> list[tuple[str, str, bool]]:
    """What the figures stand on, as (label, text, alarm) lines: each network's weights file
    (``weights``: stream -> {config key: path}, the registry's ``Stream.weight_paths``) and
    sha256, or RANDOM-INIT (alarm); the devices the trainings ran on and why (alarm when a
    GPU was there but unusable); package versions; data and run counts."""
    items = stream_sources(rows)
    used = {s for r in rows for m in (r.get("streams") or {}).values() for s in m} or set(weights)
    sourced = {s for r in rows for s in (r.get("stream_sources") or {})}  # said above, from the feature files
    for stream, files in weights.items():
        if stream not in used or stream in sourced:
            continue  # a stream no model fused, or one whose stream line says what made its features
        for key, path in files.items():
            if path is None:
                seed = config.get("features", {}).get("random_init_seed")
                items.append((key, f"RANDOM-INIT (seed {seed}): no weights file, these features are not "
                                   "pretrained embeddings", True))
            elif not Path(path).exists():
                items.append((key, f"{path}: not found now (the feature files record what was used)", True))
            else:
                digest = sha256sum(path) if Path(path).is_file() else "(a folder)"
                items.append((key, f"{path}, sha256 {digest}", False))
    for device, why in sorted({(r.get("device", "?"), r.get("cuda_status") or "") for r in rows
                               if trained(r)}):  # an ensemble or a baseline trains nothing
        items.append(("training device", f"{device}: {why}" if why else device, why.startswith("an NVIDIA driver")))
    items += settings_summary(config)
    versions = [f"Python {platform.python_version()}"] + [f"{p} {_version(p)}" for p in PACKAGES]
    items.append(("versions", ", ".join(versions), False))
    items.append(("data", ", ".join(f"{n} {k}" for k, n in counts.items()), False))
    first = (rows[0]["model"], rows[0].get("seed", 0)) if rows else None
    frames = {t: sum(r.get("n_valid_frames", {}).get(t, 0) for r in rows if (r["model"], r.get("seed", 0)) == first)
              for t in TARGETS} if rows else {}
    items.append(("validated frames, all folds", ", ".join(f"{t} {n}" for t, n in frames.items()), False))
    models = sorted({r["model"] for r in rows})
    runs = [r for r in rows if trained(r)]
    baseline = [r for r in rows if "baseline" in r]
    items.append(("runs", f"{len(models)} models x {len({r['fold'] for r in rows})} folds x "
                          f"{len({r.get('seed', 0) for r in rows})} seed(s): {len(runs)} trainings"
                          + (f", {len(rows) - len(runs) - len(baseline)} ensemble folds"
                             if len(rows) > len(runs) + len(baseline) else "")
                          + (f", {len(baseline)} folds of zero-training baselines ("
                             + "; ".join(sorted({r['baseline']['what'] for r in baseline})) + ")" if baseline else ""),
                  False))
    return items


def stream_sources(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """One line per stream some model fused: what made it, as the feature files recorded it
    (pretrained file and sha256, package and version, RANDOM-INIT, or the external CSV
    files' folder and a hash over their hashes), and which models fused it."""
    sources: dict[str, dict] = {}
    users: dict[str, set[str]] = {}
    for r in rows:
        for stream, source in (r.get("stream_sources") or {}).items():
            merged = sources.setdefault(stream, dict(source))
            merged.setdefault("files_sha256", {}).update(source.get("files_sha256") or {})
            users.setdefault(stream, set()).add(r["model"])
    items = []
    for stream, source in sorted(sources.items()):
        used_by = f" (fused by {', '.join(sorted(users[stream]))})"
        sha = source.get("weights_sha256")
        if source.get("extractor") == "external":
            files = source.get("files_sha256") or {}
            digest = hashlib.sha256("".join(f"{t}:{h}\n" for t, h in sorted(files.items())).encode()).hexdigest()
            folder = (source.get("params") or {}).get("folder", "?")
            items.append((f"stream {stream}", f"external CSV files in {folder}: {len(files)} trials, sha256 of their "
                                              f"sha256s {digest}{used_by}", False))
        elif sha == RANDOM_INIT:
            items.append((f"stream {stream}", f"RANDOM-INIT {source.get('extractor')} (seed "
                                              f"{source.get('weights_seed')}): not a pretrained network{used_by}",
                          True))
        elif sha:
            items.append((f"stream {stream}", f"{source.get('weights')}, sha256 {sha}{used_by}", False))
        else:
            items.append((f"stream {stream}", f"{source.get('weights') or 'no network'}{used_by}", False))
    return items


def settings_summary(config: dict) -> list[tuple[str, str, bool]]:
    """The settings a reader asks for first (the whole configuration is config.yaml)."""
    data, learning = config.get("data"), config.get("learning")
    if not data or not learning:
        return []
    faces = (f"the dataset's cropped_aligned frames ({data['cropped_aligned']})" if data.get("cropped_aligned")
             else f"detected and aligned here (dlib {config['media'].get('face_detector', 'hog').upper()}, upsample "
                  f"{config['media']['face_detector_upsample']})")
    train = learning["train"]
    return [("faces", faces, False),
            ("settings", f"{learning['n_folds']} folds (fold_seed {learning['fold_seed']}), up to "
                         f"{train['max_epochs']} epochs (patience {train['patience']}), windows of {train['window']} "
                         f"frames every {train['hop']}, batch {train['batch_size']}, {train['optimizer']} lr "
                         f"{train['lr']}, seeds {', '.join(map(str, learning.get('seeds', [0])))}, selection "
                         f"{_selection_name(train)}, training precision {train['precision']}; device "
                         f"features {config['features']['device']}, learning {learning['device']}", False),
            ("missing audio", f"{', '.join(train['missing_audio']['patterns'])} frames dropped, given "
                              f"{FILL_NAMES[train['missing_audio']['fill']]} (fill: {train['missing_audio']['fill']})",
             False)]


def _selection_name(train: dict) -> str:
    if train.get("selection", "validation") == "inner":
        return f"inner ({train['inner_share']:.0%})"
    return "validation (optimistic)"


def _version(package: str) -> str:
    if package == "vafusion" and "vafusion" in sys.modules:
        return sys.modules["vafusion"].__version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_rst(items: list[tuple[str, str, bool]]) -> str:
    """The first page of ``snakemake --report``: the provenance, RANDOM-INIT in red. It is
    kept short: the report centres this page vertically and cuts off what overflows the
    top. Snakemake renders it with Jinja, so it is marked raw."""
    lines = ["{% raw %}", ".. role:: alarm(raw)", "   :format: html", "",
             "vafusion: valence/arousal from talking faces", "============================================", "",
             "Provenance of this run", "----------------------", ""]
    for label, text, alarm in items:
        shown = f":alarm:`<b style=\"color:#c00\">{html.escape(text)}</b>`" if alarm else _rst_text(text)
        lines.append(f"- **{label}**: {shown}")
    lines += ["", "Figures and tables: the menu's categories (1 Summary, 2 Training, 3 Validation, 4 Missing audio);",
              "the effective configuration, with any --config/--configfile overrides, is config.yaml in 1 Summary.",
              "{% endraw %}", ""]
    return "\n".join(lines)


def _rst_text(text: str) -> str:
    """Plain text safe inside an rst paragraph (no markup characters left active)."""
    return "".join("\\" + c if c in "*`_|\\[]<>" else c for c in text)


def provenance_html(items: list[tuple[str, str, bool]]) -> str:
    lines = [f"<li>{html.escape(label)}: " + (f"<b style='color:#c00'>{html.escape(text)}</b>" if alarm
                                              else html.escape(text)) + "</li>" for label, text, alarm in items]
    return "<h2>Provenance</h2><ul>" + "".join(lines) + "</ul>"


# --- the reports -------------------------------------------------------------------------------

def figure_title(path: str | Path) -> str:
    """'<model>: <what it shows>' for a per-model figure (reports/<model>/<stem>.png)."""
    path = Path(path)
    return f"{path.parent.name}: {MODEL_FIGURES.get(path.stem, path.stem)}"


def comparison(rows: list[dict], prediction_files: list[str | Path], units: dict[str, str],
               compare: dict | None = None) -> Bootstrap:
    """The paired bootstrap over every model's validation predictions (``prediction_files``
    parallel to ``rows``' metrics files), resampling ``units`` (trial -> video, or subject
    group: ``folds.resampling_units``)."""
    files: dict[str, list[tuple[int, Path]]] = {}
    for r, path in zip(rows, prediction_files, strict=True):
        files.setdefault(r["model"], []).append((r.get("seed", 0), Path(path)))
    return Bootstrap.configured({m: load_predictions(f) for m, f in files.items()}, units, compare)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;"
         "text-align:right}td:first-child,th:first-child{text-align:left}.alarm{color:#c00;font-weight:bold}")


def write_reports(metrics_files: list[str | Path], out: dict[str, str | Path], *,
                  predictions: list[str | Path] = (), videos: dict[str, str] | None = None,
                  subjects: dict[str, str] | None = None,
                  variants: dict[str, dict] | None = None, compare: dict | None = None,
                  figures: list[str | Path] = (), missing_audio_figures: list[str | Path] = (),
                  weights: dict[str, str | None] | None = None, config: dict | None = None,
                  counts: dict[str, int] | None = None) -> None:
    """``out``: paths for "ccc" (CSV), "summary" (Markdown), "ccc_per_fold" (PNG), "html",
    "provenance" (rst) and "config" (the effective configuration, YAML), and, with the
    bootstrap, "ccc_forest" and "ccc_differences" (PNG). ``figures``: the per-model figure
    files, embedded in the HTML after the summary; ``missing_audio_figures``: one per
    pattern. ``predictions``: each metrics file's val_predictions.h5 (same order),
    ``videos``: trial -> video, ``subjects``: trial -> subject (learning.fold_groups, or
    None); with predictions and videos, the report has the bootstrap intervals and paired
    tests (``vafusion.learning.comparisons``)."""
    read = [read_metrics(p) for p in metrics_files]
    boot, missing_boots = None, {}
    unit = "subjects" if subjects else "videos"
    rows = sorted(read, key=lambda r: (r["model"], r.get("seed", 0), r["fold"]))
    if predictions:
        units = resampling_units(videos or {}, subjects)
        boot = comparison(read, predictions, units, compare)
        missing_boots = {p: missing_audio_bootstrap(rows, p, units, compare) for p in missing_audio_patterns(rows)}
    write_ccc_csv(rows, out["ccc"])
    markdown = summary_markdown(rows, boot, variants, missing_boots, unit)
    Path(out["summary"]).write_text(markdown)
    plot_ccc_per_fold(rows, out["ccc_per_fold"])
    pictures = []
    if boot is not None:
        runs = sorted({r["model"] for r in rows})
        for key, title, draw in (("ccc_forest", "Pooled CCC of every model with its interval", plot_forest),
                                 ("ccc_differences", "Every pair of models: the paired difference",
                                  plot_difference_matrix)):
            if key in out:
                draw(boot, runs, out[key], **({"optimistic": optimistic_runs(rows)} if draw is plot_forest else {}))
                pictures.append((title, out[key]))
    items = provenance(weights or {}, config or {}, counts or {}, rows)
    Path(out["provenance"]).write_text(provenance_rst(items))
    Path(out["config"]).write_text(yaml.safe_dump(config or {}, sort_keys=False))
    shown = [("CCC per fold and model", out["ccc_per_fold"])]
    shown += [(f"Missing audio, {Path(p).stem.removeprefix('missing_audio_')} frames: RJCA vs RJCA + IACA "
               "(Praveen & Alam, Fig. 3)", p) for p in missing_audio_figures]
    shown += [(figure_title(p), p) for p in figures]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>vafusion report</title>"
            f"<style>{STYLE}</style></head><body><h1>vafusion: valence/arousal validation report</h1>"
            + provenance_html(items) + "".join(_figure(title, path) for title, path in pictures)
            + markdown_to_html(markdown) + "".join(_figure(title, path) for title, path in shown) + "</body></html>")
    Path(out["html"]).write_text(page)


def _figure(title: str, path: str | Path) -> str:
    return (f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,"
            f"{base64.b64encode(Path(path).read_bytes()).decode()}'>")
