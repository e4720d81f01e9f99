"""Report contents, computed independently from known per-fold figures."""

from __future__ import annotations

import statistics

from vafusion.learning.report import summary_markdown


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
    # with / without IACA, side by side, per target: valence 0.3 -> 0.4 (+0.100)
    assert "| rjca | valence | 0.300 | 0.400 | +0.100 |" in lines
    assert "| rjca | arousal | 0.500 | 0.200 | -0.300 |" in lines
    # missing audio, valence / arousal, mean over folds, for each scope
    assert sum("Missing audio (contiguous" in line for line in lines) == 2
    at_half = 0.4 - 0.2 * 0.5, 0.4 - 2 * 0.2 * 0.5  # rjca: mean base 0.4
    assert f"| rjca | 0.400 / 0.400 | {at_half[0]:.3f} / {at_half[1]:.3f} |" in lines


def test_html_report_has_real_tables_and_says_random_init_in_red(tmp_path):
    import json

    import h5py
    import numpy as np

    from vafusion.learning.report import write_reports

    files = {"metrics": [], "history": [], "predictions": []}
    for model, fold, v, a in (("jca", 0, 0.5, 0.7), ("jca", 1, 0.3, 0.1)):
        run = tmp_path / model / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({**row(model, fold, v, a), "device": "cpu",
                                                      "cuda_status": "no NVIDIA GPU driver on this machine"}))
        (run / "history.csv").write_text("epoch,train_loss,val_ccc_mean,lr\n1,1.0,0.3,0.001\n2,0.8,0.4,0.0005\n")
        with h5py.File(run / "val_predictions.h5", "w") as h5:
            g = h5.create_group("t")
            g["prediction"], g["label"] = np.zeros((20, 2), np.float32), np.ones((20, 2), np.float32)
            g["valid"] = np.ones((20, 2), bool)
        for kind, name in (("metrics", "metrics.json"), ("history", "history.csv"), ("predictions", "val_predictions.h5")):
            files[kind].append(run / name)
    out = {k: tmp_path / f"report.{k}" for k in ("csv", "md", "html")}
    write_reports(files["metrics"], files["history"], files["predictions"], out["csv"], out["md"], out["html"],
                  weights={"iresnet50": None, "vggish": "/models/vggish.pth", "vggish_pca": None})
    page = out["html"].read_text()
    assert "<pre>" not in page and "|---|" not in page
    assert "<tr><td>jca</td><td>2</td><td>0.400 ± 0.100</td>" in page
    assert page.count("<b style='color:#c00'>RANDOM-INIT</b>") == 1 and "/models/vggish.pth" in page
    assert "vggish_pca: not used" in page
    assert "training device: cpu: no NVIDIA GPU driver on this machine" in page
