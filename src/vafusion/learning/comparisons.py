"""The report's comparisons: every model with its 95 % interval, every pair of models with a
paired bootstrap interval and p-value, the IACA gate (its effect and whether it chooses at
all), the experiments and ensembles ranked, the seed-to-seed spread, the oracle-epoch gap,
and the missing-audio curves with intervals.

The intervals come from ``vafusion.learning.bootstrap`` (whole validation videos, or
subjects, resampled, the same resample for every model, CCC recomputed on each, pooled over
folds and seeds). A difference is *resolved* when its interval excludes 0; with many pairs
some will be by chance, so the Holm-adjusted p-value is given beside it, and a resolved
difference smaller than the seed-to-seed spread is flagged: another seed could undo it.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations

from vafusion.learning.bootstrap import LEVEL_HOLDS_FROM, Bootstrap, Estimate, holm
from vafusion.learning.results import stats, trained
from vafusion.learning.streams import DEFAULT_SET, split_run

ALARM = "!! "  # a paragraph or table cell the HTML report shows in red (``report.markdown_to_html``)

TARGETS = ("valence", "arousal", "mean")
SELECTION_TEXT = {
    "inner": "epochs selected on an inner split of each fold's training videos (learning.train.selection: inner); "
             "the validation fold scored here chose nothing",
    "validation": "epochs selected on the scored validation fold itself (learning.train.selection: validation, the "
                  "papers' practice): optimistic, see the oracle-epoch gap below",
}
OPTIMISTIC = " (selected on the scored fold: optimistic)"


def fmt(mean: float, std: float | None = None, signed: bool = False) -> str:
    """'0.512', '+0.012' (signed) or '0.512 ± 0.034' (with a std); NaN stays NaN."""
    if math.isnan(mean):
        return "NaN"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if std is None else f"{text} ± {std:.3f}"


def interval(e: Estimate, signed: bool = False) -> str:
    """'0.512 [0.430, 0.581]'."""
    if math.isnan(e.estimate):
        return "NaN"
    return f"{fmt(e.estimate, signed=signed)} [{fmt(e.low, signed=signed)}, {fmt(e.high, signed=signed)}]"


def p_text(p: float) -> str:
    if math.isnan(p):
        return "NaN"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def selection_modes(rows: list[dict]) -> list[str]:
    return sorted({r.get("selection") or "validation" for r in rows if trained(r)})


def selection_line(rows: list[dict]) -> str:
    modes = selection_modes(rows)
    if len(modes) == 1:
        return f"Epoch selection: {SELECTION_TEXT[modes[0]]}."
    per = {m: sorted({r["model"] for r in rows if trained(r) and (r.get("selection") or "validation") == m})
           for m in modes}
    return "Epoch selection differs between models: " + "; ".join(f"{m}: {', '.join(rs)}" for m, rs in per.items())


def seed_spread(rows: list[dict], model: str, column: str = "ccc_mean") -> float:
    """Std (ddof 1) over seeds of the seed's mean over folds (NaN with one seed): how far
    another seed moves a model's score."""
    seeds = sorted({r.get("seed", 0) for r in rows if r["model"] == model})
    if len(seeds) < 2:
        return math.nan
    means = [stats([r[column] for r in rows if r["model"] == model and r.get("seed", 0) == s])[0] for s in seeds]
    means = [m for m in means if not math.isnan(m)]
    return statistics.stdev(means) if len(means) > 1 else math.nan


def optimistic_runs(rows: list[dict]) -> set[str]:
    """Runs whose epochs were selected on the scored validation fold (not ensembles)."""
    return {r["model"] for r in rows if trained(r) and (r.get("selection") or "validation") == "validation"}


def marked(run: str, optimistic: set[str]) -> str:
    return run + (OPTIMISTIC if run in optimistic else "")


def intervals_line(boot: Bootstrap, unit: str = "videos") -> list[str]:
    """How the intervals were made, and, below the unit count where the method's measured
    coverage falls short of its level, a warning."""
    method = {"expanded": "percentile intervals widened by the small-cluster factor sqrt(V/(V-1)) t/z",
              "studentized": "studentised (bootstrap-t) intervals",
              "percentile": "percentile intervals"}[boot.method]
    lines = [f"Intervals: {method}, {boot.confidence:.0%}, from {boot.n_resamples} resamples of the {boot.n_videos} "
             f"validation {unit} (whole {unit}, the same resamples for every model; README, Comparing models)."]
    floor = LEVEL_HOLDS_FROM.get(boot.method, 0)
    if boot.n_videos < floor:
        lines += ["", f"{ALARM}Only {boot.n_videos} validation {unit}: below {floor}, this method's measured coverage "
                      f"falls short of {boot.confidence:.0%} (docs/benchmarks.md, Bootstrap intervals), so its intervals "
                      "are too narrow and its p-values too small. Read them as indications, not findings."]
    return lines


def models_markdown(boot: Bootstrap, models: list[str], optimistic: set[str] = frozenset(),
                    unit: str = "videos") -> list[str]:
    """Every model's pooled CCC with its interval, best first."""
    ranked = sorted(models, key=lambda m: -_key(boot.score(m, "mean").estimate))
    lines = ["", f"## Pooled CCC with {boot.confidence:.0%} bootstrap intervals, best first", "",
             f"CCC of all validation frames of all folds together (as the challenge scores one set), mean over "
             f"{len(boot.seeds)} seed(s).", ""] + intervals_line(boot, unit) + ["",
             "| rank | model | valence | arousal | mean |", "|---|---|---|---|---|"]
    for i, m in enumerate(ranked, 1):
        lines.append(f"| {i} | {marked(m, optimistic)} | " + " | ".join(interval(boot.score(m, t)) for t in TARGETS)
                     + " |")
    return lines


def _key(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def pairs_markdown(boot: Bootstrap, models: list[str], optimistic: set[str] = frozenset()) -> list[str]:
    """Every pair (better mean first): the difference per target with its interval, p-value,
    Holm's adjusted p-value, and whether it is smaller than the seed spread."""
    if len(models) < 2:
        return []
    order = sorted(models, key=lambda m: -_key(boot.score(m, "mean").estimate))
    pairs = list(combinations(order, 2))
    diffs = {(a, b, t): boot.difference(a, b, t) for a, b in pairs for t in TARGETS}
    keys = list(diffs)
    adjusted = dict(zip(keys, holm([diffs[k].p_value for k in keys])))
    seeds = len(boot.seeds)
    lines = ["", "## Every pair of models: paired differences", "",
             f"A minus B per target, {boot.confidence:.0%} interval and p-value of the paired bootstrap (the same "
             f"resampled units for both; H0: no difference). Resolved: the interval excludes 0 (the same as p < "
             f"{1 - boot.confidence:.2g}). Holm: the p-value adjusted for all {len(keys)} comparisons of this table. "
             + (f"Seed spread: the std (ddof 1) over the {seeds} seeds of each model's pooled CCC, combined over the "
                "two (sqrt(s_A^2 + s_B^2)); a resolved difference smaller than it is marked: the intervals hold the "
                "trained models fixed, and another seed could undo it." if seeds > 1 else
                "One seed: how far another seed would move a difference is not measured (presets/demo-3-seeds.yaml)."),
             "", "| A | B | target | A - B [interval] | p | Holm p | resolved | seed spread |",
             "|---|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        for t in TARGETS:
            d = diffs[(a, b, t)]
            spread = "-" if math.isnan(d.seed_spread) else f"{d.seed_spread:.3f}" + (
                " (larger than the difference)" if d.within_seed_spread else "")
            lines.append(f"| {marked(a, optimistic)} | {marked(b, optimistic)} | {t} | {interval(d, True)} | "
                         f"{p_text(d.p_value)} | {p_text(adjusted[(a, b, t)])} | {'yes' if d.resolved else 'no'} | "
                         f"{spread} |")
    resolved = [f"{a} vs {b} ({t})" for (a, b, t), d in diffs.items() if d.resolved]
    fragile = [f"{a} vs {b} ({t})" for (a, b, t), d in diffs.items() if d.within_seed_spread]
    holm_kept = [f"{a} vs {b} ({t})" for (a, b, t), p in adjusted.items() if p < 1 - boot.confidence]
    lines += ["", (f"Resolved ({len(resolved)} of {len(keys)}): " + ", ".join(resolved) + ".") if resolved else
              "No difference is resolved: every interval includes 0; these models are not told apart by this data.",
              "", (f"Still below {1 - boot.confidence:.2g} after Holm's adjustment ({len(holm_kept)}): "
                   + ", ".join(holm_kept) + ".") if holm_kept else
              f"None stays below {1 - boot.confidence:.2g} after Holm's adjustment for the {len(keys)} comparisons."]
    if fragile:
        lines += ["", f"{ALARM}Resolved but smaller than the seed spread ({len(fragile)}): " + ", ".join(fragile)
                  + ". Another training seed could undo these."]
    return lines


def iaca_pairs(models: list[str]) -> list[tuple[str, str]]:
    """(attention without IACA, with IACA) for every attention trained both ways, per stream set."""
    pairs = []
    for m in models:
        base, stream_set = split_run(m)
        if base in ("ca", "jca", "rjca", "tca"):
            gated = f"{base}_iaca" + ("" if stream_set == DEFAULT_SET else f"@{stream_set}")
            if gated in models:
                pairs.append((m, gated))
    return pairs


def constant_gates(rows: list[dict], model: str) -> tuple[int, int]:
    """(trainings of ``model`` whose stage-2 gate is constant, trainings with gate diagnostics)."""
    found = [r["gate_diagnostics"] for r in rows if r["model"] == model and r.get("gate_diagnostics")]
    return sum(bool(d.get("constant")) for d in found), len(found)


def iaca_markdown(rows: list[dict], boot: Bootstrap | None) -> list[str]:
    """Praveen & Alam's Table 2 comparison: each attention with and without the IACA gate."""
    pairs = iaca_pairs(sorted({r["model"] for r in rows}))
    if not pairs:
        return []
    pooled = boot is not None
    lines = ["", "## With and without the IACA gate", "",
             "Δ as in Praveen & Alam's Table 2, a relative change in % of the CCC without IACA: "
             "100 (with - without) / without (n/a where the CCC without IACA is not positive). "
             + ("CCC, with - without and Δ: the pooled CCC (all validation frames of all folds, mean over seeds) of "
                "the paired bootstrap, with its interval and p-value; the mean ± std over folds and seeds is beside it."
                if pooled else "CCC: mean ± std over folds and seeds; Δ from those means."), ""]
    for _, gated in pairs:
        constant, total = constant_gates(rows, gated)
        if constant:
            lines += [f"{ALARM}{gated}: the gate is constant in {constant} of {total} trainings (one candidate on "
                      "almost every frame; Gate diagnostics below): in those, IACA is a fixed weighting of its "
                      "candidates, not inconsistency-aware gating"
                      + (", so this row says little about the gate." if 2 * constant > total else "."), ""]
    lines += ["| attention | target | without IACA | with IACA | with - without [interval] | p | resolved | "
              "Δ (% of without) | over folds: without / with |",
              "|---|---|---|---|---|---|---|---|---|"]
    for base, gated in pairs:
        for t in TARGETS:
            a = stats([r[f"ccc_{t}"] for r in rows if r["model"] == base])
            b = stats([r[f"ccc_{t}"] for r in rows if r["model"] == gated])
            if pooled:
                d, without, with_ = boot.difference(gated, base, t), boot.score(base, t), boot.score(gated, t)
                cells = [fmt(without.estimate), fmt(with_.estimate), interval(d, True), p_text(d.p_value),
                         "yes" if d.resolved else "no", relative_change(without.estimate, with_.estimate)]
            else:
                cells = [fmt(a[0]), fmt(b[0]), fmt(b[0] - a[0], signed=True), "-", "-", relative_change(a[0], b[0])]
            lines.append(f"| {base} | {t} | " + " | ".join(cells) + f" | {fmt(*a)} / {fmt(*b)} |")
    return lines


def relative_change(without: float, with_: float) -> str:
    """Praveen & Alam's Table 2 Δ: 100 (with - without) / without, in %. Undefined (n/a) for
    a baseline CCC <= 0, where a ratio would flip or explode; NaN stays NaN."""
    if math.isnan(without) or math.isnan(with_):
        return "NaN"
    if without <= 0:
        return "n/a"
    return f"{100 * (with_ - without) / without:+.1f} %"


def base_run(run: str, fusion_model: str, stream_set: str, models: list[str]) -> str | None:
    """The listed model a variant varies: its fusion model on its stream set if that is
    trained (an experiment with overrides), else on the default set (a ``<model>@<set>`` run
    or an experiment that only changes the streams)."""
    candidates = ([f"{fusion_model}@{stream_set}"] if stream_set != DEFAULT_SET else []) + [fusion_model]
    return next((name for name in candidates if name in models and name != run), None)


def experiments_markdown(boot: Bootstrap, experiments: dict[str, dict], models: list[str],
                         optimistic: set[str] = frozenset()) -> list[str]:
    """learning.experiments ranked by pooled mean CCC, each against the model it varies."""
    if not experiments:
        return []
    ranked = sorted(experiments, key=lambda e: -_key(boot.score(e, "mean").estimate))
    lines = ["", "## Experiments, ranked", "",
             "Each variant is trained on the same folds and seeds; its difference to the listed model it varies "
             "(same fusion model and stream set) is the paired bootstrap's."
             + (f" A variant marked{OPTIMISTIC} picked its epochs on the fold scored here, its base did not: part of "
                "its difference is that optimism (the oracle-epoch gap below), not a better model."
                if optimistic & set(experiments) else ""), "",
             "| rank | experiment | changes | mean CCC [interval] | base | minus base [interval] | p | resolved |",
             "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(ranked, 1):
        spec = experiments[e]
        base = base_run(e, spec["model"], spec["stream_set"], models)
        cells = ["-", "-", "-", "-"]
        if base is not None:
            d = boot.difference(e, base, "mean")
            cells = [marked(base, optimistic), interval(d, True), p_text(d.p_value), "yes" if d.resolved else "no"]
        lines.append(f"| {i} | {marked(e, optimistic)} | {spec['changes']} | {interval(boot.score(e, 'mean'))} | "
                     + " | ".join(cells) + " |")
    return lines


def ensembles_markdown(rows: list[dict], boot: Bootstrap) -> list[str]:
    """Each ensemble against its best member (by pooled mean CCC)."""
    found = {}
    for r in rows:
        if "ensemble" in r:
            found.setdefault(r["model"], r["ensemble"])
    if not found:
        return []
    lines = ["", "## Ensembles (per-frame mean of the members' predictions)", "",
             "Weights: equal, or from each member's CCC on the other folds (never the fold scored); the test "
             "predictions use the same ensemble.", "",
             "| ensemble | members | weights | mean CCC [interval] | best member | minus best member [interval] | p | "
             "resolved |", "|---|---|---|---|---|---|---|---|"]
    for name, spec in sorted(found.items()):
        members = list(spec["members"])
        best = max(members, key=lambda m: _key(boot.score(m, "mean").estimate))
        d = boot.difference(name, best, "mean")
        lines.append(f"| {name} | {', '.join(members)} | {spec.get('weights_mode', 'equal')} | "
                     f"{interval(boot.score(name, 'mean'))} | {best} | {interval(d, True)} | {p_text(d.p_value)} | "
                     f"{'yes' if d.resolved else 'no'} |")
    return lines


def oracle_gap_markdown(rows: list[dict]) -> list[str]:
    """The oracle-epoch gap of every inner-selection training: the validation CCC at the epoch
    the scored fold itself would have picked minus at the epoch the inner split picked."""
    def gap(r: dict) -> dict | None:
        return r.get("oracle_epoch_gap") or r.get("selection_optimism")  # the latter: runs before issue 22

    measured = [r for r in rows if gap(r)]
    if not measured:
        return []
    models = sorted({r["model"] for r in measured})
    lines = ["", "## Oracle-epoch gap", "",
             "The validation CCC at the epoch the scored validation fold itself would have picked (peeking at the "
             "answers) minus the CCC at the epoch the inner split picked (mean ± std over trainings). It bounds from "
             "above what selecting on the scored fold flatters a score by; it is not that optimism itself, which "
             "needs an untouched test set to measure.",
             "", "| model | trainings | valence | arousal | mean | same epoch |", "|---|---|---|---|---|---|"]
    everyone = []
    for m in models:
        mine = [r for r in measured if r["model"] == m]
        gaps = [gap(r) for r in mine]
        everyone += gaps
        same = sum(g["peeked_epoch"] == r["best_epoch"] for g, r in zip(gaps, mine))
        lines.append(f"| {m} | {len(gaps)} | " + " | ".join(
            fmt(*s, signed=True) for s in (stats([g[f'ccc_{t}'] for g in gaps]) for t in TARGETS))
            + f" | {same} of {len(gaps)} |")
    lines.append(f"| all | {len(everyone)} | " + " | ".join(
        fmt(*s, signed=True) for s in (stats([g[f'ccc_{t}'] for g in everyone]) for t in TARGETS))
        + " | |")
    return lines


def refit_markdown(rows: list[dict]) -> list[str]:
    """Runs refitted on all training videos: the refit model's validation CCC beside the CCC
    of the model the inner split selected (before the refit), per training."""
    refitted = [r for r in rows if r.get("refit")]
    if not refitted:
        return []
    lines = ["", "## Refit after selection", "",
             "After the inner split chose the epoch count, the model was trained again for that many epochs on all "
             "of the fold's training videos (learning.train.refit). Refit minus selected model, validation mean CCC, "
             "mean ± std over trainings (the paired bootstrap of a refit and a non-refit run is in the tables above "
             "when both are trained).", "",
             "| model | trainings | epochs (mean) | selected model | refit model | refit - selected |",
             "|---|---|---|---|---|---|"]
    for m in sorted({r["model"] for r in refitted}):
        mine = [r for r in refitted if r["model"] == m]
        before = [r["refit"]["selected_model"]["ccc_mean"] for r in mine]
        after = [r["ccc_mean"] for r in mine]
        lines.append(f"| {m} | {len(mine)} | {stats([r['refit']['epochs'] for r in mine])[0]:.1f} | "
                     f"{fmt(*stats(before))} | {fmt(*stats(after))} | "
                     f"{fmt(*stats([a - b for a, b in zip(after, before)]), signed=True)} |")
    return lines


def gates_markdown(rows: list[dict]) -> list[str]:
    """Per IACA model and fold (seeds pooled): does the stage-2 gate choose per frame?"""
    gated = [r for r in rows if r.get("gate_diagnostics") and r["gate_diagnostics"].get("frames")]
    if not gated:
        return []
    lines = ["", "## Gate diagnostics (IACA stage 2: audio, visual, joint)", "",
             "Per model and fold, mean over seeds: the share of validation frames whose largest weight exceeds 0.99 "
             "(one-hot), the mean entropy of the weights (0: one-hot, ln 3 = 1.10: uniform), the share of frames "
             "where a candidate other than the most used one has the largest weight, and the mean weights on the "
             "dropped and on the kept audio frames at the largest share of the missing-audio test (audio / visual / "
             "joint). Constant: the same candidate on almost every frame, picked one-hot or hardly moving; ignores "
             "audio: dropped and kept frames get the same weights.", "",
             "| model | fold | one-hot | entropy | off the most used | most used | dropped audio | kept audio | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted({r["model"] for r in gated}):
        for fold in sorted({r["fold"] for r in gated if r["model"] == m}):
            mine = [r["gate_diagnostics"] for r in gated if r["model"] == m and r["fold"] == fold]
            most = sorted({d["most_used"] for d in mine})
            shifts = [next(iter(d.get("missing_audio", {}).values()), None) for d in mine]
            dropped = _weights([s["dropped"] for s in shifts if s])
            kept = _weights([s["kept"] for s in shifts if s and s.get("kept")])
            constant = sum(d["constant"] for d in mine)
            ignores = sum(d.get("ignores_audio", False) for d in mine)
            verdict = []
            if constant:
                verdict.append(f"constant in {constant} of {len(mine)} seeds")
            if ignores:
                verdict.append(f"ignores audio in {ignores} of {len(mine)}")
            text = (ALARM + ", ".join(verdict)) if verdict else "chooses per frame"
            lines.append(f"| {m} | {fold} | {stats([d['share_above_099'] for d in mine])[0]:.2f} | "
                         f"{stats([d['mean_entropy'] for d in mine])[0]:.2f} | "
                         f"{stats([d['share_off_most_used'] for d in mine])[0]:.2f} | {', '.join(most)} | {dropped} | "
                         f"{kept} | {text} |")
    return lines


def _weights(values: list[list[float]]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{stats([v[k] for v in values])[0]:.2f}" for k in range(3))


# --- missing audio with intervals ------------------------------------------------------------------

def missing_audio_bootstrap(rows: list[dict], pattern: str, units: dict[str, str],
                            compare: dict | None = None) -> Bootstrap | None:
    """A paired bootstrap over every point of the missing-audio curves (all validation trials)
    of ``pattern``: one run per (model, share), named ``"<model> | <share>"``, from each
    training's per-trial sufficient statistics (``missing_audio.missing_audio_scores``).
    None when a training has none (trained before they were recorded)."""
    runs: dict[str, dict] = {}
    for r in rows:
        record = (r.get("missing_audio") or {}).get(pattern)
        if not trained(r) or not record:
            continue
        if "trial_stats" not in record:
            return None
        for share, per_trial in record["trial_stats"].items():
            for trial, values in per_trial.items():
                runs.setdefault(curve_point(r["model"], share), {})[(r.get("seed", 0), trial)] = values
    if not runs:
        return None
    return Bootstrap.configured(runs, units, compare)


def curve_point(model: str, share: str | float) -> str:
    return f"{model} | {float(share):g}"


def missing_audio_markdown(rows: list[dict], fill: str, boots: dict[str, Bootstrap | None]) -> list[str]:
    """Praveen & Alam's missing-audio test per pattern: the pooled CCC of every model at every
    share with its interval (all validation trials), each IACA model minus its attention
    without IACA per share, and the fold means over the longest trial of each fold."""
    from vafusion.learning.results import MISSING_SCOPES, missing_audio_curve, missing_audio_patterns

    lines = []
    rows = [r for r in rows if trained(r)]
    models = sorted({r["model"] for r in rows})
    for m in models:
        constant, total = constant_gates(rows, m)
        if constant:
            lines += ["", f"{ALARM}{m}'s gate is constant in {constant} of {total} trainings: in those its "
                          "missing-audio curve shows a gate that keeps one weighting whatever the audio, not robustness "
                          "to losing it (Gate diagnostics above)."]
    for pattern in missing_audio_patterns(rows):
        boot = boots.get(pattern)
        shares = missing_audio_curve(rows, models[0], pattern, "all_trials", "valence")[0]
        for scope, scope_name in MISSING_SCOPES:
            pooled = boot is not None and scope == "all_trials"
            lines += ["", f"## Missing audio ({pattern} frames dropped, given {fill}), {scope_name}: CCC valence / "
                          "arousal, " + ("pooled with intervals" if pooled else "mean over folds and seeds"), ""]
            natural = [r["missing_audio"]["unvoiced_share"] for r in rows
                       if "unvoiced_share" in r.get("missing_audio", {})]
            if pattern == "unvoiced" and scope == "all_trials" and natural:
                lines += [f"Unvoiced: the frames whose speech presence is below the threshold, least speech first, "
                          f"at most the share; {100 * statistics.fmean(natural):.0f} % of the validation frames are "
                          "unvoiced (mean over folds), so the curve is flat past that share.", ""]
            lines += ["| model | " + " | ".join(f"{s * 100:.0f} %" for s in shares) + " |",
                      "|---|" + "---|" * len(shares)]
            for m in models:
                if pooled:
                    cells = [f"{interval(boot.score(curve_point(m, s), 'valence'))} / "
                             f"{interval(boot.score(curve_point(m, s), 'arousal'))}" for s in shares]
                else:
                    curves = [missing_audio_curve(rows, m, pattern, scope, t)[1] for t in ("valence", "arousal")]
                    cells = [f"{fmt(v)} / {fmt(a)}" for v, a in zip(*curves)]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            if pooled:
                for base, gated in iaca_pairs(models):
                    cells = []
                    for s in shares:
                        ds = [boot.difference(curve_point(gated, s), curve_point(base, s), t) for t in ("valence",
                                                                                                     "arousal")]
                        cells.append(" / ".join(interval(d, True) + (" *" if d.resolved else "") for d in ds))
                    lines.append(f"| {gated} - {base} | " + " | ".join(cells) + " |")
        if boot is not None and iaca_pairs(models):
            lines += ["", "Rows 'A - B': the paired difference at each share with its interval; * resolved."]
    return lines
