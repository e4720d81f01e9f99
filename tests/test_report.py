"""Report contents, computed independently from known per-fold figures."""

from __future__ import annotations

import hashlib
import json
import math
import statistics

import h5py
import numpy as np
import pytest
import yaml

from vafusion.learning.report import summary_markdown, write_reports
from vafusion.learning.results import load_runs, per_trial_ccc


def row(model, fold, v, a, missing=None):
    return {"model": model, "fold": fold, "ccc_valence": v, "ccc_arousal": a, "ccc_mean": (v + a) / 2,
            "windows_per_s": 10.0, "missing_audio": missing or {}}


def missing(base, slope):
    """A missing-audio record whose CCC falls linearly with the share."""
    curve = {f"{s:g}": {"ccc_valence": base - slope * s, "ccc_arousal": base - 2 * slope * s,
                        "ccc_mean": base - 1.5 * slope * s} for s in (0.0, 0.5)}
    return {"longest_trial": "t", "contiguous": {"all_trials": curve, "longest_trial": curve}}


def test_summary_has_mean_std_best_fold_iaca_pairs_and_missing_audio_per_target():
    rows = [row("rjca", 0, 0.2, 0.4, missing(0.3, 0.2)), row("rjca", 1, 0.4, 0.6, missing(0.5, 0.2)),
            row("rjca_iaca", 0, 0.5, 0.1, missing(0.3, 0.1)), row("rjca_iaca", 1, 0.3, 0.3, missing(0.3, 0.1))]
    text = summary_markdown(rows)
    lines = text.splitlines()

    def fmt(values):
        return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"

    rjca = next(line for line in lines if line.startswith("| rjca | 2 |"))
    assert f"| {fmt([0.2, 0.4])} | {fmt([0.4, 0.6])} | {fmt([0.3, 0.5])} |" in rjca
    assert "| 1 (0.500) |" in rjca  # best fold by mean CCC
    gated = next(line for line in lines if line.startswith("| rjca_iaca | 2 |"))
    assert "| 0 (0.300) |" in gated  # fold 0 and 1 tie at 0.3: the first is reported
    # with / without IACA, side by side, per target: valence 0.3 -> 0.4 (+0.100, +33.3 % of 0.3)
    assert ("| attention | target | without IACA | with IACA | with - without [interval] | p | resolved | "
            "Δ (% of without) | over folds: without / with |") in lines
    # without validation predictions there is no bootstrap: the difference of the means, no interval
    assert "| rjca | valence | 0.300 | 0.400 | +0.100 | - | - | +33.3 % | 0.300 ± 0.100 / 0.400 ± 0.100 |" in lines
    assert "| rjca | arousal | 0.500 | 0.200 | -0.300 | - | - | -60.0 % | 0.500 ± 0.100 / 0.200 ± 0.100 |" in lines
    assert "| rjca | mean | 0.400 | 0.300 | -0.100 | - | - | -25.0 % | 0.400 ± 0.100 / 0.300 ± 0.000 |" in lines
    # missing audio, valence / arousal, mean over folds, for each scope
    assert sum("Missing audio (contiguous" in line for line in lines) == 2
    at_half = 0.4 - 0.2 * 0.5, 0.4 - 2 * 0.2 * 0.5  # rjca: mean base 0.4
    assert f"| rjca | 0.400 / 0.400 | {at_half[0]:.3f} / {at_half[1]:.3f} |" in lines


def test_iaca_delta_is_table_2s_relative_improvement_in_percent():
    """Praveen & Alam, Table 2: "Δ represents relative improvement in percentage". Their own
    CCCs (one fold each here) must give the Δ they print; a non-positive baseline has none."""
    table_2 = {"ca": ((0.541, 0.517), (0.632, 0.597), ("16.8", "15.5")),
               "tca": ((0.564, 0.543), (0.637, 0.629), ("12.9", "15.8")),
               "jca": ((0.657, 0.580), (0.693, 0.609), ("5.5", "5.0")),
               "rjca": ((0.721, 0.694), (0.749, 0.725), ("3.9", "4.5"))}
    rows = [r for m, (without, with_, _) in table_2.items()
            for r in (row(m, 0, *without), row(f"{m}_iaca", 0, *with_))]
    lines = summary_markdown(rows).splitlines()
    for m, (without, with_, printed) in table_2.items():
        for target, w0, w1, delta in zip(("valence", "arousal"), without, with_, printed):
            assert f"| {m} | {target} | {w0:.3f} | {w1:.3f} | {w1 - w0:+.3f} | - | - | +{delta} % |" in "\n".join(lines)
    rows = [row("ca", 0, -0.1, 0.0), row("ca_iaca", 0, 0.2, 0.1)]
    lines = summary_markdown(rows).splitlines()
    assert "| ca | valence | -0.100 | 0.200 | +0.300 | - | - | n/a |" in "\n".join(lines)
    assert "| ca | arousal | 0.000 | 0.100 | +0.100 | - | - | n/a |" in "\n".join(lines)


def test_iaca_delta_and_its_interval_come_from_the_same_pooled_ccc(tmp_path):
    """With the bootstrap, the Δ % is the pooled CCC's relative change, like the interval
    beside it, not the fold means' (which differ here: one fold with a near-zero baseline
    swings the mean of per-fold CCCs)."""
    rng = np.random.default_rng(7)
    label = {f"t{i}": np.column_stack([rng.normal(size=60), rng.normal(size=60)]) for i in range(6)}
    specs, pooled = [], {}
    for model, noise in (("jca", 0.9), ("jca_iaca", 0.8)):
        preds = {t: y + noise * rng.normal(size=y.shape) for t, y in label.items()}
        for fold, names in ((0, ["t0", "t1", "t2"]), (1, ["t3", "t4", "t5"])):
            v = plain_ccc(np.concatenate([preds[t][:, 0] for t in names]), np.concatenate([label[t][:, 0] for t in names]))
            specs.append((model, fold, v, v, {t: (preds[t], label[t], np.ones((60, 2), bool)) for t in names}))
        pooled[model] = plain_ccc(np.concatenate([preds[t][:, 0] for t in label]),
                                  np.concatenate([label[t][:, 0] for t in label]))
    files = fake_runs(tmp_path, specs)
    out = {k: tmp_path / f"out.{k}" for k in ("ccc", "summary", "ccc_per_fold", "html", "provenance", "config")}
    write_reports(files["metrics"], out, predictions=files["predictions"], videos={t: t for t in label},
                  compare={"resamples": 300, "confidence": 0.95, "seed": 0, "method": "expanded"})
    line = next(x for x in out["summary"].read_text().splitlines() if x.startswith("| jca | valence |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{pooled['jca']:.3f}" and cells[3] == f"{pooled['jca_iaca']:.3f}"
    assert cells[4].startswith(f"{pooled['jca_iaca'] - pooled['jca']:+.3f} [")
    assert cells[7] == f"{100 * (pooled['jca_iaca'] - pooled['jca']) / pooled['jca']:+.1f} %"


def fake_runs(tmp_path, specs):
    """metrics.json, history.csv and val_predictions.h5 per (model, fold, v, a, trials) spec;
    ``trials``: {name: (prediction (T, 2), label (T, 2), valid (T, 2))}."""
    files = {"metrics": [], "history": [], "predictions": []}
    for model, fold, v, a, trials in specs:
        run = tmp_path / model / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({**row(model, fold, v, a), "device": "cpu", "best_epoch": 2,
                                                      "cuda_status": "no NVIDIA GPU driver on this machine",
                                                      "n_valid_frames": {"valence": 20, "arousal": 20}}))
        (run / "history.csv").write_text("epoch,train_loss,val_ccc_mean,lr\n1,1.0,0.3,0.001\n2,0.8,0.4,0.0005\n")
        with h5py.File(run / "val_predictions.h5", "w") as h5:
            for name, (prediction, label, valid) in trials.items():
                g = h5.create_group(name)
                g["prediction"], g["label"], g["valid"] = prediction, label, valid
        for kind, name in (("metrics", "metrics.json"), ("history", "history.csv"), ("predictions", "val_predictions.h5")):
            files[kind].append(run / name)
    return files


def test_ccc_per_trial_is_each_trial_on_its_own(tmp_path):
    rng = np.random.default_rng(0)
    trials = {}
    for name, length in (("a", 30), ("b", 50), ("c", 8)):
        label = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
        prediction = (0.6 * label + 0.3 * rng.normal(size=(length, 2))).astype(np.float32)
        valid = np.ones((length, 2), bool)
        valid[:5, 0] = False  # -5 rows of valence
        trials[name] = (prediction, label, valid)
    trials["c"][2][:, 1] = False  # no arousal annotated at all: NaN, not an error
    files = fake_runs(tmp_path, [("jca", 0, 0.5, 0.5, trials)])
    rows = per_trial_ccc(load_runs(files["metrics"], files["history"], files["predictions"]))
    assert [r["trial"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        prediction, label, valid = trials[r["trial"]]
        for j, target in enumerate(("valence", "arousal")):
            x = [float(p) for p, ok in zip(prediction[:, j], valid[:, j]) if ok]
            y = [float(t) for t, ok in zip(label[:, j], valid[:, j]) if ok]
            assert r[f"frames_{target}"] == len(x)
            if not x:
                assert math.isnan(r[f"ccc_{target}"])
                continue
            mx, my = sum(x) / len(x), sum(y) / len(y)
            cov = sum((a - mx) * (b - my) for a, b in zip(x, y)) / len(x)
            vx, vy = sum((a - mx) ** 2 for a in x) / len(x), sum((b - my) ** 2 for b in y) / len(y)
            assert r[f"ccc_{target}"] == pytest.approx(2 * cov / (vx + vy + (mx - my) ** 2), abs=1e-6)


def weights_by_stream(config):
    """The report rule's weights: the fused streams' files by config key (registry entries)."""
    from vafusion.features import registry

    return {s: registry.get(s).weights_by_key(config) for s in ("iresnet50", "vggish")}


def write_fake_reports(tmp_path, weights, config):
    from vafusion.learning.figures import model_figures

    length = 20
    trial = {"t": (np.linspace(-0.5, 0.5, 2 * length, dtype=np.float32).reshape(length, 2),
                   np.ones((length, 2), np.float32), np.ones((length, 2), bool))}
    files = fake_runs(tmp_path, [("jca", 0, 0.5, 0.7, trial), ("jca", 1, 0.3, 0.1, trial)])
    figures = {name: tmp_path / "jca" / f"{name}.png" for name in ("training_curves", "ccc_per_trial", "scatter",
                                                                   "traces")}
    model_figures(load_runs(files["metrics"], files["history"], files["predictions"]),
                  {**figures, "ccc_per_trial_csv": tmp_path / "jca" / "ccc_per_trial.csv"})
    out = {k: tmp_path / name for k, name in (("ccc", "ccc.csv"), ("summary", "summary.md"), ("html", "report.html"),
                                              ("ccc_per_fold", "ccc_per_fold.png"), ("provenance", "provenance.rst"),
                                              ("config", "config.yaml"))}
    write_reports(files["metrics"], out, figures=list(figures.values()), weights=weights, config=config,
                  counts={"videos": 3, "train trials": 2, "validation trials": 1, "test trials": 0})
    return out


def test_html_report_has_real_tables_every_figure_and_says_random_init_in_red(tmp_path):
    weights_file = tmp_path / "vggish.pth"
    weights_file.write_bytes(b"not really a network, but bytes with a known sha256")
    config = {"features": {"random_init_seed": 7, "vggish": {"pca": False}}, "learning": {"models": ["jca"]},
              "weights": {"iresnet50": None, "vggish": str(weights_file), "vggish_pca": None}}
    out = write_fake_reports(tmp_path, weights_by_stream(config), config)
    page = out["html"].read_text()
    assert "<pre>" not in page and "|---|" not in page
    assert "<tr><td>jca</td><td>2</td><td>0.400 ± 0.100</td>" in page
    assert page.count("<b style='color:#c00'>RANDOM-INIT (seed 7)") == 1
    assert f"{weights_file}, sha256 {hashlib.sha256(weights_file.read_bytes()).hexdigest()}" in page
    assert "weights.vggish_pca" not in page  # features.vggish.pca is off: the PCA file is not part of the run
    assert "training device: cpu: no NVIDIA GPU driver on this machine" in page
    assert "3 videos, 2 train trials, 1 validation trials, 0 test trials" in page
    assert "faces:" not in page  # a config without data/learning sections: no settings line
    assert page.count("data:image/png;base64,") == 5  # CCC per fold + the model's four figures
    assert "<h2>jca: predicted against annotated, every validation frame</h2>" in page


def test_provenance_page_renders_as_snakemake_renders_it_with_random_init_in_red(tmp_path):
    """The first page of `snakemake --report`: Jinja first, then docutils, as Snakemake does."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    weights = tmp_path / "{{w}}_*x*.pth"  # shown as it is, not as Jinja or rst markup
    weights.write_bytes(b"0")
    config = {"features": {"random_init_seed": 0, "vggish": {"pca": True}},
              "weights": {"iresnet50": str(weights), "vggish": None, "vggish_pca": None}}
    out = write_fake_reports(tmp_path, weights_by_stream(config), config)
    source = out["provenance"].read_text()
    body = publish_parts(Environment().from_string(source).render(), writer="html")["html_body"]
    assert body.count('<b style="color:#c00">RANDOM-INIT (seed 0)') == 2  # vggish_pca is used here
    assert f"{weights}, sha256 {hashlib.sha256(b'0').hexdigest()}" in body
    assert "Provenance of this run" in body and "system_message" not in body  # no rst error
    assert yaml.safe_load(out["config"].read_text()) == config
    assert "torch " in body and "Python " in body


def test_stream_sets_are_listed_compared_fold_by_fold_and_their_sources_named():
    """Each run's streams, the same fusion model on two sets side by side with the per-fold
    difference (paired by fold), and one provenance line per stream from what its feature
    files recorded: RANDOM-INIT in red, a packaged model with its sha256, external CSV files
    with a hash over their hashes."""
    import hashlib as hl

    from vafusion.learning.report import provenance, stream_set_markdown

    default = {"audio": ["vggish", "mfcc"], "visual": ["iresnet50"]}
    pretrained = {"audio": ["egemaps"], "visual": ["landmarks", "openface_au"]}
    sources = {"vggish": {"extractor": "vggish", "weights": "random-init", "weights_sha256": "random-init",
                          "weights_seed": 3},
               "egemaps": {"extractor": "egemaps", "weights": "openSMILE eGeMAPSv02", "weights_sha256": "ab" * 32},
               "openface_au": {"extractor": "external", "params": {"folder": "/data/openface"},
                               "files_sha256": {"t1": "11", "t2": "22"}}}
    rows = []
    for fold, (v0, a0, v1, a1) in enumerate([(0.8, 0.6, 0.5, 0.7), (0.4, 0.2, 0.3, 0.1), (0.6, 0.5, 0.6, 0.3)]):
        rows.append({**row("jca", fold, v0, a0), "streams": default, "stream_sources": {"vggish": sources["vggish"]},
                     "normaliser_neutralised_dims": {"iresnet50": 0, "vggish": 50 + fold, "mfcc": 0}})
        rows.append({**row("jca@pretrained", fold, v1, a1), "streams": pretrained,
                     "stream_sources": {k: sources[k] for k in ("egemaps", "openface_au")}})
    lines = stream_set_markdown(rows)
    assert "| jca@pretrained | jca | pretrained | audio egemaps; visual landmarks + openface_au | (not recorded) |" \
        in lines
    # the neutralised dimensions per stream, mean over the trainings (50, 51, 52)
    assert "| jca | jca | default | audio vggish + mfcc; visual iresnet50 | iresnet50 0, vggish 51, mfcc 0 |" in lines
    diffs = [0.5 - 0.8, 0.3 - 0.4, 0.6 - 0.6]  # valence, fold by fold
    expected = f"{statistics.mean(diffs):+.3f} ± {statistics.pstdev(diffs):.3f}"
    assert (f"| jca | pretrained | valence | {statistics.mean([0.5, 0.3, 0.6]):.3f} ± "
            f"{statistics.pstdev([0.5, 0.3, 0.6]):.3f} | {expected} | 3 |") in lines
    assert "| jca | default | valence | 0.600 ± 0.163 | - | 3 |" in lines
    items = {label: (text, alarm) for label, text, alarm in provenance({}, {}, {}, rows)}
    assert items["stream vggish"][1] and "RANDOM-INIT vggish (seed 3)" in items["stream vggish"][0]
    assert items["stream egemaps"] == (f"openSMILE eGeMAPSv02, sha256 {'ab' * 32} (fused by jca@pretrained)", False)
    combined = hl.sha256(b"t1:11\nt2:22\n").hexdigest()
    assert items["stream openface_au"][0] == (f"external CSV files in /data/openface: 2 trials, sha256 of their "
                                              f"sha256s {combined} (fused by jca@pretrained)")


def plain_ccc(x, y):
    """Lin's CCC with population moments, written out (independent of vafusion.learning.ccc)."""
    mx, my = x.mean(), y.mean()
    return float(2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2))


def test_report_over_seeds_with_pooled_intervals_pairs_ensemble_and_the_oracle_epoch_gap(tmp_path):
    """Two models and an ensemble, two seeds, two folds, six videos (one with two trials):
    the summary's mean ± std over folds and seeds, the seed spread, the pooled CCC (all
    validation frames of all folds, mean over seeds) and every pairwise difference, each
    recomputed here; the ensemble's row; the oracle-epoch gap table; the selection mode named."""
    rng = np.random.default_rng(4)
    folds = {0: ["v0", "v1", "v5_left", "v5_right"], 1: ["v2", "v3", "v4"]}
    videos = {t: t.removesuffix("_left").removesuffix("_right") for f in folds.values() for t in f}
    labels = {t: rng.uniform(-1, 1, (40, 2)).astype(np.float32) for t in videos}
    noise = {"jca": 0.3, "rjca": 0.8}
    metrics_files, prediction_files, rows = [], [], {}
    for model in ("jca", "rjca", "ens"):
        for seed in (0, 1):
            for fold, trials in folds.items():
                run = tmp_path / model / f"seed{seed}" / f"fold{fold}"
                run.mkdir(parents=True)
                with h5py.File(run / "val_predictions.h5", "w") as h5:
                    for t in trials:
                        if model == "ens":
                            pred = np.mean([rows[("jca", seed, fold)]["pred"][t], rows[("rjca", seed, fold)]["pred"][t]],
                                           axis=0)
                        else:
                            pred = labels[t] + noise[model] * rng.normal(size=labels[t].shape).astype(np.float32)
                        g = h5.create_group(t)
                        g["prediction"], g["label"], g["valid"] = pred, labels[t], np.ones((40, 2), bool)
                        rows.setdefault((model, seed, fold), {"pred": {}})["pred"][t] = pred
                per_fold = {target: plain_ccc(np.concatenate([rows[(model, seed, fold)]["pred"][t][:, j] for t in trials]),
                                              np.concatenate([labels[t][:, j] for t in trials]))
                            for j, target in enumerate(("valence", "arousal"))}
                record = {**row(model, fold, per_fold["valence"], per_fold["arousal"]), "seed": seed,
                          "n_valid_frames": {"valence": 40 * len(trials), "arousal": 40 * len(trials)}}
                if model == "ens":
                    record["ensemble"] = {"members": ["jca", "rjca"], "weights_mode": "equal", "weights": {}}
                else:
                    record.update(best_epoch=2, selection="inner",
                                  oracle_epoch_gap={"peeked_epoch": 3, "ccc_valence": 0.01 * (seed + 1),
                                                      "ccc_arousal": 0.02 * fold, "ccc_mean": 0.03})
                rows[(model, seed, fold)]["metrics"] = record
                (run / "metrics.json").write_text(json.dumps(record))
                metrics_files.append(run / "metrics.json")
                prediction_files.append(run / "val_predictions.h5")
    out = {k: tmp_path / name for k, name in (("ccc", "ccc.csv"), ("summary", "summary.md"), ("html", "report.html"),
                                              ("ccc_per_fold", "ccc_per_fold.png"), ("provenance", "provenance.rst"),
                                              ("config", "config.yaml"), ("ccc_forest", "forest.png"),
                                              ("ccc_differences", "differences.png"))}
    write_reports(metrics_files, out, predictions=prediction_files, videos=videos,
                  compare={"resamples": 2000, "confidence": 0.95, "seed": 0, "method": "expanded"})
    for picture in ("ccc_forest", "ccc_differences"):  # the comparisons as pictures, ahead of the tables
        assert out[picture].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = out["html"].read_text()
    assert page.index("Pooled CCC of every model with its interval") < page.index("Every pair of models: paired")
    lines = out["summary"].read_text().splitlines()
    assert out["ccc"].read_text().splitlines()[0] == "model,seed,fold,ccc_valence,ccc_arousal,ccc_mean"
    assert any(line.startswith("Epoch selection: epochs selected on an inner split") for line in lines)

    def fmt(values, signed=False):
        return f"{statistics.fmean(values):{'+' if signed else ''}.3f} ± {statistics.pstdev(values):.3f}"

    jca = [rows[("jca", s, f)]["metrics"] for s in (0, 1) for f in folds]
    spread = statistics.stdev([statistics.fmean(r["ccc_mean"] for r in jca if r["seed"] == s) for s in (0, 1)])
    assert any(line.startswith(f"| jca | 4 | {fmt([r['ccc_valence'] for r in jca])} |") and f"| {spread:.3f} |" in line
               for line in lines)

    def pooled(model, j):
        per_seed = []
        for s in (0, 1):
            trials = [(t, f) for f, ts in folds.items() for t in ts]
            x = np.concatenate([rows[(model, s, f)]["pred"][t][:, j] for t, f in trials])
            y = np.concatenate([labels[t][:, j] for t, _ in trials])
            per_seed.append(plain_ccc(x, y))
        return float(np.mean(per_seed))

    for model in ("jca", "rjca", "ens"):
        v, a = pooled(model, 0), pooled(model, 1)
        line = next(line for line in lines if line.startswith("| ") and f"| {model} | {v:.3f} [" in line)
        assert f"| {a:.3f} [" in line and f"| {(v + a) / 2:.3f} [" in line
    # every pair, better first: jca minus rjca per target; jca is far better on 7 videos x 40 frames
    diff = pooled("jca", 0) - pooled("rjca", 0)
    pair = next(line for line in lines if line.startswith("| jca | rjca | valence |"))
    assert f"| {diff:+.3f} [" in pair and "| yes |" in pair
    # its seed spread: sqrt(s_jca^2 + s_rjca^2), s the std (ddof 1) over seeds of the pooled CCC of each seed
    def per_seed(model, j, s):
        trials = [(t, f) for f, ts in folds.items() for t in ts]
        return plain_ccc(np.concatenate([rows[(model, s, f)]["pred"][t][:, j] for t, f in trials]),
                         np.concatenate([labels[t][:, j] for t, _ in trials]))
    spreads = [statistics.stdev([per_seed(m, 0, s) for s in (0, 1)]) for m in ("jca", "rjca")]
    assert pair.endswith(f"| {math.hypot(*spreads):.3f} |") or f"| {math.hypot(*spreads):.3f} (larger" in pair
    assert sum(line.startswith("| ens | ") or line.startswith("| jca | ens |") for line in lines) >= 3
    ensemble = next(line for line in lines if line.startswith("| ens | jca, rjca | equal |"))
    assert "| jca |" in ensemble  # its best member
    gap = next(line for line in lines if line.startswith("| jca | 4 | +"))
    assert fmt([0.01, 0.01, 0.02, 0.02], signed=True) in gap and fmt([0, 0.02, 0, 0.02], signed=True) in gap
    assert "| 0 of 4 |" in gap  # peeked epoch 3, selected 2
