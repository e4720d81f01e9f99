"""The report's comparisons: every model with its 95 % interval, every pair of models with a
paired bootstrap interval and p-value, the IACA gate, the experiments and ensembles ranked,
the seed-to-seed spread and the optimism of selecting epochs on the scored fold.

The intervals come from ``vafusion.learning.bootstrap`` (whole validation videos resampled,
the same resample for every model, CCC recomputed on each, pooled over folds and seeds). A
difference is *resolved* when its interval excludes 0; with many pairs some will be by
chance, so the Holm-adjusted p-value is given beside it.
"""

from __future__ import annotations

import math
from itertools import combinations

from vafusion.learning.bootstrap import Bootstrap, Estimate, holm
from vafusion.learning.results import stats
from vafusion.learning.streams import DEFAULT_SET, split_run

TARGETS = ("valence", "arousal", "mean")
SELECTION_TEXT = {
    "inner": "epochs selected on an inner split of each fold's training videos (learning.train.selection: inner); "
             "the validation fold scored here chose nothing",
    "validation": "epochs selected on the scored validation fold itself (learning.train.selection: validation, the "
                  "papers' practice): optimistic, see the selection optimism below",
}


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
    return sorted({r.get("selection") or "validation" for r in rows if "ensemble" not in r})


def selection_line(rows: list[dict]) -> str:
    modes = selection_modes(rows)
    if len(modes) == 1:
        return f"Epoch selection: {SELECTION_TEXT[modes[0]]}."
    per = {m: sorted({r["model"] for r in rows if "ensemble" not in r and (r.get("selection") or "validation") == m})
           for m in modes}
    return "Epoch selection differs between models: " + "; ".join(f"{m}: {', '.join(rs)}" for m, rs in per.items())


def seed_spread(rows: list[dict], model: str, column: str = "ccc_mean") -> float:
    """Std over seeds of the seed's mean over folds (NaN with one seed): how far another seed moves a model's score."""
    seeds = sorted({r.get("seed", 0) for r in rows if r["model"] == model})
    if len(seeds) < 2:
        return math.nan
    return stats([stats([r[column] for r in rows if r["model"] == model and r.get("seed", 0) == s])[0]
                  for s in seeds])[1]


def models_markdown(boot: Bootstrap, models: list[str]) -> list[str]:
    """Every model's pooled CCC with its interval, best first."""
    ranked = sorted(models, key=lambda m: -_key(boot.score(m, "mean").estimate))
    lines = ["", f"## Pooled CCC with {boot.confidence:.0%} bootstrap intervals, best first", "",
             f"CCC of all validation frames of all folds together (as the challenge scores one set), mean over "
             f"{len(boot.seeds)} seed(s); intervals from {boot.n_resamples} resamples of the {boot.n_videos} "
             "validation videos (whole videos; README, Comparing models).", "",
             "| rank | model | valence | arousal | mean |", "|---|---|---|---|---|"]
    for i, m in enumerate(ranked, 1):
        lines.append(f"| {i} | {m} | " + " | ".join(interval(boot.score(m, t)) for t in TARGETS) + " |")
    return lines


def _key(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def pairs_markdown(boot: Bootstrap, models: list[str]) -> list[str]:
    """Every pair (better mean first): the difference per target with its interval and p-value."""
    if len(models) < 2:
        return []
    order = sorted(models, key=lambda m: -_key(boot.score(m, "mean").estimate))
    pairs = list(combinations(order, 2))
    diffs = {(a, b, t): boot.difference(a, b, t) for a, b in pairs for t in TARGETS}
    keys = list(diffs)
    adjusted = dict(zip(keys, holm([diffs[k].p_value for k in keys])))
    lines = ["", "## Every pair of models: paired differences", "",
             f"A minus B per target, {boot.confidence:.0%} interval and p-value of the paired bootstrap (the same "
             f"resampled videos for both; H0: no difference). Resolved: the interval excludes 0. Holm: the p-value "
             f"adjusted for all {len(keys)} comparisons of this table.", "",
             "| A | B | target | A - B [interval] | p | Holm p | resolved |", "|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        for t in TARGETS:
            d = diffs[(a, b, t)]
            lines.append(f"| {a} | {b} | {t} | {interval(d, True)} | {p_text(d.p_value)} | "
                         f"{p_text(adjusted[(a, b, t)])} | {'yes' if d.resolved else 'no'} |")
    resolved = [f"{a} vs {b} ({t})" for (a, b, t), d in diffs.items() if d.resolved]
    holm_kept = [f"{a} vs {b} ({t})" for (a, b, t), p in adjusted.items() if p < 1 - boot.confidence]
    lines += ["", (f"Resolved ({len(resolved)} of {len(keys)}): " + ", ".join(resolved) + ".") if resolved else
              "No difference is resolved: every interval includes 0; these models are not told apart by this data.",
              "", (f"Still below {1 - boot.confidence:.2g} after Holm's adjustment ({len(holm_kept)}): "
                   + ", ".join(holm_kept) + ".") if holm_kept else
              f"None stays below {1 - boot.confidence:.2g} after Holm's adjustment for the {len(keys)} comparisons."]
    return lines


def iaca_markdown(rows: list[dict], boot: Bootstrap | None) -> list[str]:
    """Praveen & Alam's Table 2 comparison: each attention with and without the IACA gate."""
    models = sorted({r["model"] for r in rows})
    pairs = []
    for m in models:
        base, stream_set = split_run(m)
        if base in ("ca", "jca", "rjca", "tca"):
            gated = f"{base}_iaca" + ("" if stream_set == DEFAULT_SET else f"@{stream_set}")
            if gated in models:
                pairs.append((m, gated))
    if not pairs:
        return []
    lines = ["", "## With and without the IACA gate", "",
             "Δ as in Praveen & Alam's Table 2, a relative change in % of the CCC without IACA: "
             "100 (with - without) / without (n/a where the CCC without IACA is not positive). "
             "CCC: mean ± std over folds and seeds; with - without: the paired bootstrap's pooled difference, "
             "its interval and p-value.", "",
             "| attention | target | without IACA | with IACA | with - without [interval] | p | resolved | "
             "Δ (% of without) |",
             "|---|---|---|---|---|---|---|---|"]
    for base, gated in pairs:
        for t in TARGETS:
            a = stats([r[f"ccc_{t}"] for r in rows if r["model"] == base])
            b = stats([r[f"ccc_{t}"] for r in rows if r["model"] == gated])
            if boot is not None:
                d = boot.difference(gated, base, t)
                diff, p, res = interval(d, True), p_text(d.p_value), "yes" if d.resolved else "no"
            else:
                diff, p, res = fmt(b[0] - a[0], signed=True), "-", "-"
            lines.append(f"| {base} | {t} | {fmt(*a)} | {fmt(*b)} | {diff} | "
                         f"{p} | {res} | {relative_change(a[0], b[0])} |")
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


def experiments_markdown(boot: Bootstrap, experiments: dict[str, dict], models: list[str]) -> list[str]:
    """learning.experiments ranked by pooled mean CCC, each against the model it varies."""
    if not experiments:
        return []
    ranked = sorted(experiments, key=lambda e: -_key(boot.score(e, "mean").estimate))
    lines = ["", "## Experiments, ranked", "",
             "Each variant is trained on the same folds and seeds; its difference to the listed model it varies "
             "(same fusion model and stream set) is the paired bootstrap's.", "",
             "| rank | experiment | changes | mean CCC [interval] | base | minus base [interval] | p | resolved |",
             "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(ranked, 1):
        spec = experiments[e]
        base = base_run(e, spec["model"], spec["stream_set"], models)
        cells = ["-", "-", "-", "-"]
        if base is not None:
            d = boot.difference(e, base, "mean")
            cells = [base, interval(d, True), p_text(d.p_value), "yes" if d.resolved else "no"]
        lines.append(f"| {i} | {e} | {spec['changes']} | {interval(boot.score(e, 'mean'))} | " + " | ".join(cells)
                     + " |")
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


def optimism_markdown(rows: list[dict]) -> list[str]:
    """How much selecting the epoch on the scored fold would flatter each model: the
    validation CCC at the epoch the validation fold picks minus at the epoch the inner split
    picked (recorded by every inner-selection training)."""
    measured = [r for r in rows if r.get("selection_optimism")]
    if not measured:
        return []
    models = sorted({r["model"] for r in measured})
    lines = ["", "## Selection optimism", "",
             "The validation CCC at the epoch the scored validation fold itself would have picked minus the CCC at "
             "the epoch the inner split picked: what selecting on the scored fold adds (mean ± std over trainings).",
             "", "| model | trainings | valence | arousal | mean | same epoch |", "|---|---|---|---|---|---|"]
    everyone = []
    for m in models:
        mine = [r["selection_optimism"] for r in measured if r["model"] == m]
        everyone += mine
        same = sum(o["peeked_epoch"] == r["best_epoch"] for o, r in
                   zip(mine, [r for r in measured if r["model"] == m]))
        lines.append(f"| {m} | {len(mine)} | " + " | ".join(
            fmt(*s, signed=True) for s in (stats([o[f'ccc_{t}'] for o in mine]) for t in TARGETS))
            + f" | {same} of {len(mine)} |")
    lines.append(f"| all | {len(everyone)} | " + " | ".join(
        fmt(*s, signed=True) for s in (stats([o[f'ccc_{t}'] for o in everyone]) for t in TARGETS))
        + " | |")
    return lines
