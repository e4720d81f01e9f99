"""The learning stage's promises, each against an independent computation in the test:
test predictions are the mean of the fold models, normalisation uses training trials only,
early stopping restores the best epoch, warm-up + cosine schedule, resume only when nothing
changed, smoothing, inner selection on held-out training groups and its measured optimism,
the fusion model apart from the run's name."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from test_learning import DIMS, LEARNING, SILENCE, synthetic_dataset
from vafusion.learning.align import write_aligned
from vafusion.learning.data import Normalizer, TrialData, load_trial, make_batch, open_trial, window_starts
from vafusion.learning.folds import make_folds
from vafusion.learning.missing_audio import drop_audio, missing_frames
from vafusion.learning.predict import fold_ccc, load_model, predict_test_trials, predict_trial, smooth
from vafusion.learning.selection import inner_split
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold
from vafusion.models import build_fusion_model

HP = LEARNING["cross_attention"]


def config(seed: int = 0, **changes) -> TrainConfig:
    """Small settings, selecting on the validation fold unless ``selection`` says otherwise
    (most promises below are about what is selected, not on what)."""
    # the synthetic trials hold no speech presence: the missing-audio patterns without unvoiced
    missing = {**LEARNING["train"]["missing_audio"], "patterns": ["contiguous", "scattered"]}
    return TrainConfig.from_dict({**LEARNING["train"], "window": 40, "hop": 20, "batch_size": 4, "lr": 3e-3,
                                  "max_epochs": 4, "warmup_epochs": 1, "patience": 10, "selection": "validation",
                                  "missing_audio": missing, **changes}, seed=seed)


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def state_dict(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def test_test_predictions_are_the_mean_of_the_fold_models(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    other = {"fold": 1, "train": fold["train"][2:] + fold["validation"], "validation": fold["train"][:2]}
    runs = [train_fold("ca", HP, f, paths, tmp_path / f"fold{f['fold']}", config(), device="cpu") for f in (fold, other)]
    assert runs[0]["ccc_mean"] != runs[1]["ccc_mean"]
    models = [tmp_path / "fold0" / "model.pt", tmp_path / "fold1" / "model.pt"]
    predict_test_trials(models, {"trial7": paths["trial7"]}, tmp_path / "test", device="cpu")
    lines = (tmp_path / "test" / "trial7.txt").read_text().splitlines()
    assert lines[0] == "valence,arousal"
    written = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
    trial = load_trial(paths["trial7"])
    each = []
    for path in models:  # each fold model on its own, with its own normaliser
        model, normalizer, cfg, smoothing = load_model(path, torch.device("cpu"))
        each.append(predict_trial(model, normalizer.apply(trial), cfg, torch.device("cpu"), smoothing))
    assert len(written) == trial.length
    assert np.abs(each[0] - each[1]).max() > 1e-3  # otherwise a mean proves nothing
    np.testing.assert_allclose(written, (each[0] + each[1]) / 2, atol=2e-6)


def test_normalisation_statistics_come_from_the_training_trials_only(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    for name in fold["validation"]:  # shifted validation features: a leak would move the mean
        with h5py.File(paths[name], "r+") as h5:
            for stream in ("iresnet50", "vggish", "mfcc"):
                h5[stream][...] = h5[stream][:] + 5.0
    train_fold("ca", HP, fold, paths, tmp_path / "run", config(max_epochs=1), device="cpu")
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["normalizer"]
    for stream in ("iresnet50", "vggish", "mfcc"):
        frames = []
        for name in fold["train"]:
            with h5py.File(paths[name]) as h5:
                frames.append(h5[stream][:].astype(np.float64))
        x = np.concatenate(frames)
        np.testing.assert_allclose(saved["mean"][stream].numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(saved["std"][stream].numpy(), x.std(0), rtol=1e-5)
        assert not saved["constant"][stream].any()


def test_early_stopping_restores_the_best_epoch_and_reports_its_ccc(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    cfg = config(lr=0.05, max_epochs=30, patience=3)  # a high rate: the validation CCC peaks and falls
    metrics = train_fold("ca", HP, fold, paths, tmp_path / "run", cfg, device="cpu")
    rows = history(tmp_path / "run")
    scores = [float(r["val_ccc_mean"]) for r in rows]
    best = int(np.argmax(scores))  # the first maximum
    assert metrics["best_epoch"] == best + 1
    assert metrics["ccc_mean"] == pytest.approx(scores[best], abs=1e-6)
    assert len(rows) == metrics["epochs"]
    assert metrics["epochs"] < cfg.max_epochs and metrics["epochs"] == metrics["best_epoch"] + cfg.patience
    # selection on the validation fold: nothing held out, no optimism measured, no inner columns
    assert metrics["selection"] == "validation" and metrics["inner_trials"] == []
    assert metrics["oracle_epoch_gap"] is None and metrics["n_train_trials"] == len(fold["train"])
    assert metrics["seed"] == 0 and metrics["fusion_model"] == "ca"
    assert not any(column.startswith("inner_") for column in rows[0])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["oracle_epoch_gap"] is None
    # the saved model is the best epoch's: it reproduces the reported CCC on its own
    model, normalizer, saved_cfg, smoothing = load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))
    val = [normalizer.apply(load_trial(paths[n])) for n in fold["validation"]]
    predictions = {t.name: predict_trial(model, t, saved_cfg, torch.device("cpu"), smoothing) for t in val}
    again = fold_ccc(predictions, val)
    assert again["ccc_valence"] == pytest.approx(metrics["ccc_valence"], abs=1e-6)
    assert again["ccc_arousal"] == pytest.approx(metrics["ccc_arousal"], abs=1e-6)


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine(tmp_path):
    paths, fold = synthetic_dataset(tmp_path, n_trials=4)
    fold = {"fold": 0, "train": ["trial0", "trial1", "trial2"], "validation": ["trial3"]}
    cfg = config(lr=0.01, max_epochs=7, warmup_epochs=2, patience=100)
    train_fold("ca", HP, fold, paths, tmp_path / "run", cfg, device="cpu")
    used = [float(r["lr"]) for r in history(tmp_path / "run")]
    expected = []
    for e in range(7):  # the rate used during epoch e (0-based)
        if e < 2:
            expected.append(0.01 * (e + 1) / 3)
        else:
            expected.append(0.01 * 0.5 * (1 + math.cos(math.pi * (e - 2) / 5)))
    np.testing.assert_allclose(used, expected, rtol=1e-9)


def test_resume_only_when_nothing_changed(tmp_path, caplog):
    paths, fold = synthetic_dataset(tmp_path)
    cfg = config(max_epochs=5)
    full = train_fold("ca", HP, fold, paths, tmp_path / "full", cfg, audio_fill=SILENCE, device="cpu")

    # (a) interrupted and resumed with the same inputs: the same model, bit for bit
    train_fold("ca", HP, fold, paths, tmp_path / "a", cfg, audio_fill=SILENCE, device="cpu", stop_after_epochs=2)
    with caplog.at_level("INFO"):
        resumed = train_fold("ca", HP, fold, paths, tmp_path / "a", cfg, audio_fill=SILENCE, device="cpu")
    assert "resuming ca fold 0 after epoch 2" in caplog.text
    assert resumed["ccc_mean"] == full["ccc_mean"]
    for key, value in state_dict(tmp_path / "full").items():
        torch.testing.assert_close(state_dict(tmp_path / "a")[key], value, rtol=0, atol=0)

    # (b) a changed setting: the checkpoint is ignored, the result is a fresh run's
    changed = config(max_epochs=5, lr=1e-3)
    train_fold("ca", HP, fold, paths, tmp_path / "b", cfg, device="cpu", stop_after_epochs=2)
    caplog.clear()
    with caplog.at_level("INFO"):
        after_change = train_fold("ca", HP, fold, paths, tmp_path / "b", changed, device="cpu")
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
    fresh = train_fold("ca", HP, fold, paths, tmp_path / "b_fresh", changed, device="cpu")
    assert after_change["ccc_mean"] == fresh["ccc_mean"] and after_change["epochs"] == 5
    for key, value in state_dict(tmp_path / "b_fresh").items():
        torch.testing.assert_close(state_dict(tmp_path / "b")[key], value, rtol=0, atol=0)

    # (c) a changed input file: ignored as well
    train_fold("ca", HP, fold, paths, tmp_path / "c", cfg, device="cpu", stop_after_epochs=2)
    with h5py.File(paths["trial0"], "r+") as h5:
        h5["valence"][...] = -h5["valence"][:]
    caplog.clear()
    with caplog.at_level("INFO"):
        train_fold("ca", HP, fold, paths, tmp_path / "c", cfg, device="cpu")
    assert "ignoring" in caplog.text and "resuming" not in caplog.text


@pytest.mark.parametrize("window", [1, 2, 5, 10, 25])
def test_smoothing_is_a_centred_moving_average_clipped_at_the_edges(window):
    rng = np.random.default_rng(window)
    for length in (7, 40):  # 7 frames: a window longer than the trial averages what exists
        x = rng.normal(size=(length, 2)).astype(np.float32)
        expected = np.zeros_like(x)
        for t in range(length):
            lo, hi = max(0, t - window // 2), min(length, t + (window - 1) // 2 + 1)
            expected[t] = x[lo:hi].mean(axis=0)
        np.testing.assert_allclose(smooth(x, window), expected, rtol=1e-5, atol=1e-6)


def test_smoothing_applies_to_the_models_that_ask_for_it(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    smoothed = train_fold("ca", {**HP, "smoothing": 9}, fold, paths, tmp_path / "s", config(max_epochs=2), device="cpu")
    plain = train_fold("ca", {**HP, "smoothing": 0}, fold, paths, tmp_path / "p", config(max_epochs=2), device="cpu")
    with h5py.File(tmp_path / "s" / "val_predictions.h5") as s, h5py.File(tmp_path / "p" / "val_predictions.h5") as p:
        raw = p["trial6"]["prediction"][:]
        np.testing.assert_allclose(s["trial6"]["prediction"][:], smooth(raw, 9), atol=1e-6)
    assert smoothed["ccc_mean"] != plain["ccc_mean"]
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["ccc_mean"] == smoothed["ccc_mean"]


# --- storage: training reads windows from the aligned files ------------------------------------

def random_trials(folder: Path, n_trials: int, length: int, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(n_trials):
        streams = {s: (rng.normal(size=(length, d)) * 0.01 + 1000.0).astype(np.float32) for s, d in DIMS.items()}
        values = {t: rng.uniform(-1, 1, length).astype(np.float32) for t in ("valence", "arousal")}
        values["arousal"][:7] = -5
        paths[f"trial{i}"] = folder / f"trial{i}.h5"
        write_aligned(paths[f"trial{i}"], streams, values, np.ones(length, bool), {"trial": f"trial{i}"})
    return paths


def test_windows_read_from_storage_equal_those_of_the_loaded_trial(tmp_path):
    paths = random_trials(tmp_path, 3, 130)
    stored = [open_trial(p) for p in paths.values()]
    normalizer = Normalizer.fit(stored)
    for window in (40, 300):  # inside the trial, and past its end (padding)
        items = [(stored[1], 0), (stored[2], 95), (stored[0], 129)]
        loaded = [(normalizer.apply(load_trial(t.path)), start) for t, start in items]
        ours, theirs = make_batch(items, window, normalizer), make_batch(loaded, window)
        for s in DIMS:
            assert torch.equal(ours.streams[s], theirs.streams[s]), s
        assert torch.equal(ours.labels, theirs.labels) and torch.equal(ours.valid, theirs.valid)
        assert torch.equal(ours.padding, theirs.padding)
    assert ours.padding[2].sum() == 299 and not ours.valid[0, :7, 1].any()


def test_normaliser_fitted_trial_by_trial_equals_the_statistics_of_all_frames(tmp_path):
    # features around 1000 with a spread of 0.01: a naive sum of squares in float32 fails here
    paths = random_trials(tmp_path, 5, 97)
    normalizer = Normalizer.fit(open_trial(p) for p in paths.values())
    for s in DIMS:
        x = np.concatenate([load_trial(p).streams[s] for p in paths.values()]).astype(np.float64)
        np.testing.assert_allclose(normalizer.mean[s], x.mean(0), rtol=1e-7)
        np.testing.assert_allclose(normalizer.std[s], x.std(0), rtol=1e-4)


def test_training_memory_does_not_grow_with_the_data(tmp_path):
    """Python-side peak allocations (numpy included) of a whole train_fold, validation and
    missing-audio test included, on 6 and on 24 trials: the same, far below the data."""
    cfg = config(window=40, hop=40, batch_size=4, max_epochs=1,
                 missing_audio={"shares": [0.0, 0.5], "patterns": ["contiguous"], "fill": "zeros"})
    peaks, data_bytes = {}, {}
    for n in (2, 6, 24):  # the first run only warms up (one-time allocations of torch and numpy)
        paths = random_trials(tmp_path / f"n{n}", n, 1000)
        data_bytes[n] = sum(p.stat().st_size for p in paths.values())
        fold = {"fold": 0, "train": sorted(paths)[1:], "validation": sorted(paths)[:1]}
        tracemalloc.start()
        train_fold("ca", HP, fold, paths, tmp_path / f"run{n}", cfg, audio_fill=SILENCE, device="cpu")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert data_bytes[24] > 3.9 * data_bytes[6]
    assert peaks[24] < 1.2 * peaks[6], (peaks, data_bytes)
    assert peaks[24] < data_bytes[24] / 4, (peaks, data_bytes)


def gates_by_loops(model, trial, cfg) -> np.ndarray:
    """(T, 7) gate weights: each window run alone, its frames' G_a, G_v, G_av summed and
    divided by how many windows cover the frame."""
    total, count = np.zeros((trial.length, 7)), np.zeros(trial.length)
    with torch.no_grad():
        for start in window_starts(trial.length, cfg.window, cfg.hop):
            batch = make_batch([(trial, start)], cfg.window)
            _, gates = model(batch.streams, batch.padding, return_gates=True)
            for k in range(min(cfg.window, trial.length - start)):
                frame = start + k
                total[frame] += np.concatenate([gates["audio"][0, k], gates["visual"][0, k], gates["fusion"][0, k]])
                count[frame] += 1
    return total / count[:, None]


def test_iaca_gate_weights_are_recorded_per_frame_and_under_missing_audio(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    cfg = config(max_epochs=2, missing_audio={"shares": [0.0, 0.3, 0.6], "patterns": ["contiguous", "scattered"],
                                              "fill": "zeros"})
    metrics = train_fold("jca_iaca", HP, fold, paths, tmp_path / "run", cfg, audio_fill=SILENCE, device="cpu")
    model, normalizer, saved_cfg, _ = load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))
    longest = metrics["missing_audio"]["longest_trial"]
    with h5py.File(tmp_path / "run" / "val_predictions.h5") as h5:
        for name in fold["validation"]:
            gates = h5[name]["gates"][:]
            assert list(h5[name]["gates"].attrs["columns"]) == ["G_a0", "G_a1", "G_v0", "G_v1", "G_av0", "G_av1", "G_av2"]
            expected = gates_by_loops(model, normalizer.apply(load_trial(paths[name])), saved_cfg)
            np.testing.assert_allclose(gates, expected, atol=1e-5)
            for cols in ((0, 1), (2, 3), (4, 5, 6)):  # each gate is a softmax over its units
                np.testing.assert_allclose(gates[:, cols].sum(axis=1), 1.0, atol=1e-5)
        for pattern in ("contiguous", "scattered"):
            per_share = metrics["missing_audio"][pattern]["gates"]
            assert per_share["0"]["dropped"] is None and set(per_share) == {"0", "0.3", "0.6"}
            pooled = {"dropped": [], "kept": []}
            for name in fold["validation"]:
                dropped = missing_frames(open_trial(paths[name]), 0.6, pattern, cfg.seed)
                without_audio = normalizer.apply(drop_audio(load_trial(paths[name]), dropped, SILENCE))
                g = gates_by_loops(model, without_audio, saved_cfg)
                pooled["dropped"].append(g[dropped, 4:])
                pooled["kept"].append(g[~dropped, 4:])
                if name == longest:  # the longest trial's trace at the largest share
                    np.testing.assert_array_equal(h5[longest][f"dropped_{pattern}"][:], dropped)
                    np.testing.assert_allclose(h5[longest][f"gates_missing_audio_{pattern}"][:], g, atol=1e-5)
            for part, frames in pooled.items():
                np.testing.assert_allclose(per_share["0.6"][part], np.concatenate(frames).mean(axis=0), atol=1e-5)
        assert not any(k.startswith("gates_missing_audio") for n in h5 for k in h5[n] if n != longest)

    plain = train_fold("ca", HP, fold, paths, tmp_path / "plain", config(max_epochs=1), audio_fill=SILENCE, device="cpu")
    assert "gates" not in plain["missing_audio"]["contiguous"]
    with h5py.File(tmp_path / "plain" / "val_predictions.h5") as h5:
        assert all(set(h5[n]) == {"prediction", "label", "valid"} for n in h5)


# --- numbers that cannot be silently wrong (issue 15) ---------------------------------------------

def set_stream(paths: dict, names: list[str], stream: str, column: int, values) -> None:
    for name in names:
        with h5py.File(paths[name], "r+") as h5:
            x = h5[stream][:]
            x[:, column] = values(len(x))
            h5[stream][...] = x


def test_a_dimension_constant_in_training_is_neutralised_not_amplified(tmp_path):
    """A VGGish unit dead (0) over every training frame that comes alive at validation, at
    test and in the missing-audio rows: the old floor of 1e-6 on its std multiplied 0.01 by
    10^6. Now it reads 0 there, the rest is standardised as before, and the validation CCC
    is what it is when the unit stays dead."""
    paths, fold = synthetic_dataset(tmp_path)
    dead, rng = 17, np.random.default_rng(1)
    set_stream(paths, fold["train"], "vggish", dead, lambda n: np.zeros(n))
    quiet = {name: tmp_path / "quiet" / f"{name}.h5" for name in paths}  # the same data, the unit dead everywhere
    quiet["trial0"].parent.mkdir()
    for name, path in paths.items():
        quiet[name].write_bytes(path.read_bytes())
    set_stream(quiet, fold["validation"], "vggish", dead, lambda n: np.zeros(n))
    set_stream(paths, fold["validation"], "vggish", dead, lambda n: rng.uniform(0.005, 0.01, n))  # alive

    normalizer = Normalizer.fit(open_trial(paths[n]) for n in fold["train"])
    assert np.flatnonzero(normalizer.constant["vggish"]).tolist() == [dead]
    assert not normalizer.constant["iresnet50"].any() and not normalizer.constant["mfcc"].any()
    fill = {"vggish": np.full(128, 0.01, np.float32), "mfcc": np.zeros(39, np.float32)}  # a zero/silence row
    for name in fold["validation"]:
        trial = load_trial(paths[name])
        for shown in (normalizer.apply(trial), normalizer.apply(drop_audio(trial, np.ones(trial.length, bool), fill))):
            assert np.all(shown.streams["vggish"][:, dead] == 0)
            assert max(np.abs(x).max() for x in shown.streams.values()) < 100  # bounded, not 10^4
        others = np.delete(np.arange(128), dead)  # every other dimension: (x - mean) / std as before
        x = trial.streams["vggish"][:, others]
        np.testing.assert_allclose(normalizer.apply(trial).streams["vggish"][:, others],
                                   (x - normalizer.mean["vggish"][others]) / normalizer.std["vggish"][others],
                                   rtol=1e-5, atol=1e-5)

    cfg = config(max_epochs=2)
    alive = train_fold("ca", HP, fold, paths, tmp_path / "alive", cfg, audio_fill=fill, device="cpu")
    still = train_fold("ca", HP, fold, quiet, tmp_path / "still", cfg, audio_fill=fill, device="cpu")
    for key in ("ccc_valence", "ccc_arousal"):
        assert alive[key] == still[key]
    assert alive["normaliser_neutralised_dims"] == {"iresnet50": 0, "vggish": 1, "mfcc": 0}
    saved = torch.load(tmp_path / "alive" / "model.pt", weights_only=True)["normalizer"]
    assert np.flatnonzero(saved["constant"]["vggish"].numpy()).tolist() == [dead]
    model, loaded, saved_cfg, _ = load_model(tmp_path / "alive" / "model.pt", torch.device("cpu"))
    trial = loaded.apply(load_trial(paths["trial7"]))  # the test path uses the recorded decision
    assert np.all(trial.streams["vggish"][:, dead] == 0)


def unannotate(paths: dict, names: list[str], targets: tuple[str, ...]) -> None:
    for name in names:
        with h5py.File(paths[name], "r+") as h5:
            for target in targets:
                h5[f"valid_{target}"][...] = False


def test_a_fold_without_annotated_arousal_selects_on_valence_and_says_so(tmp_path, caplog):
    paths, fold = synthetic_dataset(tmp_path)
    unannotate(paths, fold["validation"], ("arousal",))
    metrics = train_fold("ca", HP, fold, paths, tmp_path / "run", config(max_epochs=4), device="cpu")
    assert "fold 0" in caplog.text and "trial6, trial7" in caplog.text and "no annotated arousal" in caplog.text
    assert metrics["unscored_targets"] == ["arousal"] and metrics["selected_on"] == ["ccc_valence"]
    assert math.isnan(metrics["ccc_arousal"]) and not math.isnan(metrics["ccc_valence"])
    scores = [float(r["val_ccc_valence"]) for r in history(tmp_path / "run")]
    assert metrics["best_epoch"] == int(np.argmax(scores)) + 1  # was -1: no epoch "improved" on a NaN mean
    assert metrics["ccc_valence"] == pytest.approx(max(scores), abs=1e-6)

    from vafusion.learning.report import summary_markdown
    other = {**metrics, "fold": 1, "ccc_arousal": 0.5, "ccc_mean": (metrics["ccc_valence"] + 0.5) / 2,
             "unscored_targets": [], "selected_on": ["ccc_valence", "ccc_arousal"]}
    summary = summary_markdown([metrics, other])
    assert "ca fold 0: no annotated arousal frame in its validation trials" in summary
    assert "| ca | 2 |" in summary and "| 0.500 ± 0.000 |" in summary  # arousal: fold 1 alone, said above


def test_a_fold_that_cannot_be_scored_stops_and_an_untrained_model_never_reaches_a_report(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    unannotate(paths, fold["validation"], ("valence", "arousal"))
    with pytest.raises(ValueError, match=r"ca fold 0 cannot be scored: its validation trials \(trial6, trial7\)"):
        train_fold("ca", HP, fold, paths, tmp_path / "run", config(max_epochs=2), device="cpu")
    assert not (tmp_path / "run" / "model.pt").exists()

    # a validation trial whose features hold a NaN: every epoch's CCC is NaN, no epoch is kept
    (tmp_path / "nan").mkdir()
    paths, fold = synthetic_dataset(tmp_path / "nan")
    set_stream(paths, ["trial6"], "mfcc", 3, lambda n: np.where(np.arange(n) == 10, np.nan, 0.0))
    with pytest.raises(RuntimeError, match="ca fold 0: no epoch of 2 had a finite validation CCC"):
        train_fold("ca", HP, fold, paths, tmp_path / "nan" / "run", config(max_epochs=2), device="cpu")
    assert not (tmp_path / "nan" / "run" / "model.pt").exists()

    from vafusion.learning.results import load_metrics
    old = tmp_path / "metrics.json"  # what the old code saved for such a fold
    old.write_text(json.dumps({"model": "ca", "fold": 0, "ccc_valence": math.nan, "ccc_arousal": math.nan,
                               "ccc_mean": math.nan, "best_epoch": -1}))
    with pytest.raises(ValueError, match="best_epoch -1: this model was never selected"):
        load_metrics([old])


def predictions_by_loops(model, trial, cfg, autocast: bool) -> np.ndarray:
    """Each window alone through the model (float32, or under CPU bf16 autocast), averaged
    per frame over the windows that cover it."""
    total, count = np.zeros((trial.length, 2)), np.zeros(trial.length)
    for start in window_starts(trial.length, cfg.window, cfg.hop):
        batch = make_batch([(trial, start)], cfg.window)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(batch.streams, batch.padding).float().numpy()[0]
        n = min(cfg.window, trial.length - start)
        total[start:start + n] += out[:n]
        count[start:start + n] += 1
    return total / count[:, None]


def test_predictions_are_float32_whatever_the_training_precision(tmp_path):
    """precision bfloat16 runs the GPU's mixed-precision training path on the CPU (autocast);
    what is scored and written is the float32 forward of the kept model."""
    paths, fold = synthetic_dataset(tmp_path)
    runs = {p: train_fold("jca", HP, fold, paths, tmp_path / p, config(max_epochs=2, precision=p), device="cpu")
            for p in ("float32", "bfloat16")}
    a, b = state_dict(tmp_path / "float32"), state_dict(tmp_path / "bfloat16")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # autocast really ran in training
    model, normalizer, cfg, _ = load_model(tmp_path / "bfloat16" / "model.pt", torch.device("cpu"))
    assert cfg.precision == "bfloat16"
    with h5py.File(tmp_path / "bfloat16" / "val_predictions.h5") as h5:
        written = {n: h5[n]["prediction"][:] for n in fold["validation"]}
    worst_rounding = 0.0
    for name in fold["validation"]:
        trial = normalizer.apply(load_trial(paths[name]))
        assert written[name].dtype == np.float32
        np.testing.assert_allclose(written[name], predictions_by_loops(model, trial, cfg, False), rtol=0, atol=1e-6)
        rounded = predictions_by_loops(model, trial, cfg, True)
        worst_rounding = max(worst_rounding, np.abs(rounded - written[name]).max())
    assert worst_rounding > 1e-4  # a bf16 evaluation would have been visibly different
    val = [load_trial(paths[n]) for n in fold["validation"]]
    assert runs["bfloat16"]["ccc_mean"] == pytest.approx(fold_ccc(written, val)["ccc_mean"], abs=1e-9)


# --- selection on held-out training groups (inner) -----------------------------------------------

def test_the_seed_comes_from_the_job_or_from_the_saved_settings():
    values = dict(LEARNING["train"])
    assert "seed" not in values  # config.yaml lists learning.seeds, one job each
    with pytest.raises(ValueError, match="TrainConfig needs a seed"):
        TrainConfig.from_dict(values)
    cfg = TrainConfig.from_dict(values, seed=3)
    assert cfg.seed == 3 and cfg.selection == values["selection"] and cfg.inner_share == values["inner_share"]
    assert TrainConfig.from_dict(asdict(cfg)) == cfg  # a model.pt's train_config holds its seed
    with pytest.raises(ValueError, match="seed=4 contradicts the settings' own seed 3"):
        TrainConfig.from_dict(asdict(cfg), seed=4)
    with pytest.raises(ValueError, match="learning.train.selection must be one of inner, validation"):
        TrainConfig.from_dict({**values, "selection": "test"}, seed=0)


# 4 two-person videos (a _left and a _right trial each) and 9 one-person videos in training
GROUPED = {f"p{i}_{side}": f"p{i}" for i in range(4) for side in ("left", "right")} | {f"s{i}": f"s{i}" for i in range(9)}


def test_inner_split_holds_out_whole_groups_seeded_by_seed_and_fold():
    # fold 1 of 3 trains on a chunk and on the validation partition (a two-person video among it)
    fold = make_folds(GROUPED, {"v0": "v0", "v1_left": "v1", "v1_right": "v1"}, 3, seed=0)["folds"][1]
    assert ["v1_left", "v1_right"] in fold["train_groups"]
    n_groups = len(fold["train_groups"])
    draws = set()
    for seed in range(20):
        cfg = config(seed=seed, selection="inner", inner_share=0.25)
        inner = inner_split(fold, cfg)
        assert inner == inner_split(fold, cfg)  # the same draw every time (a rerun, a resumed run)
        held = [g for g in fold["train_groups"] if set(g) & set(inner)]
        assert sorted(t for g in held for t in g) == inner  # whole groups only
        assert len(held) == max(1, round(0.25 * n_groups))
        for pair in [("v1_left", "v1_right")] + [(f"p{i}_left", f"p{i}_right") for i in range(4)]:
            assert (pair[0] in inner) == (pair[1] in inner)  # both faces of a video on one side
        draws.add(tuple(inner))
    assert len(draws) > 5  # another seed draws other groups
    assert any("_left" in t for draw in draws for t in draw)  # pairs are drawn, together
    seeded = config(seed=0, selection="inner", inner_share=0.25)
    assert any(inner_split({**fold, "fold": k}, seeded) != inner_split(fold, seeded) for k in range(2, 8))  # the fold too
    assert len(inner_split(fold, config(selection="inner", inner_share=0.01))) >= 1  # at least one group

    with pytest.raises(ValueError, match=rf"inner_share 0.95 holds out {n_groups} of the {n_groups} training group\(s\) "
                                         "of fold 1 .* none to train on"):
        inner_split(fold, config(selection="inner", inner_share=0.95))
    with pytest.raises(ValueError, match="folds.json predates inner selection: rerun make_folds"):
        inner_split({k: v for k, v in fold.items() if k != "train_groups"}, seeded)
    with pytest.raises(ValueError, match="not a partition of its training trials"):
        inner_split({**fold, "train_groups": fold["train_groups"][1:]}, seeded)


def inner_dataset(tmp_path: Path) -> tuple[dict, dict]:
    """10 synthetic trials: training trials 0-7 in 5 videos (0+1, 2+3 and 6+7 two trials
    each), validation trials 8 and 9; fold 0 of make_folds, with its train_groups."""
    paths, _ = synthetic_dataset(tmp_path, n_trials=10)
    videos = {"trial0": "a", "trial1": "a", "trial2": "b", "trial3": "b", "trial4": "c", "trial5": "d",
              "trial6": "e", "trial7": "e"}
    return paths, make_folds(videos, {"trial8": "f", "trial9": "g"}, 2, seed=0)["folds"][0]


def stream_frames(paths: dict, names: list[str], stream: str) -> np.ndarray:
    frames = []
    for name in names:
        with h5py.File(paths[name]) as h5:
            frames.append(h5[stream][:].astype(np.float64))
    return np.concatenate(frames)


def test_inner_selection_trains_on_the_rest_picks_on_held_out_groups_and_measures_the_optimism(tmp_path, caplog):
    paths, fold = inner_dataset(tmp_path)
    # the first seed whose run stops on the inner patience before the validation fold's best
    # epoch (a real gap to measure; which seed does depends on the CPU's arithmetic)
    for seed in range(1, 9):
        cfg = config(seed=seed, selection="inner", inner_share=0.4, lr=0.05, max_epochs=12, patience=3,
                     refit=False)
        shutil.rmtree(tmp_path / "inner", ignore_errors=True)
        metrics = train_fold("ca", HP, fold, paths, tmp_path / "inner", cfg, device="cpu")
        if metrics["epochs"] < cfg.max_epochs and metrics["oracle_epoch_gap"]["peeked_epoch"] != metrics["best_epoch"]:
            break
    inner = inner_split(fold, cfg)
    rest = [t for t in fold["train"] if t not in inner]
    assert len([g for g in fold["train_groups"] if set(g) <= set(inner)]) == 2  # round(0.4 * 5) whole groups
    assert metrics["selection"] == "inner" and metrics["inner_trials"] == inner and metrics["seed"] == seed
    assert metrics["n_train_trials"] == len(rest) and metrics["n_validation_trials"] == 2
    saved = torch.load(tmp_path / "inner" / "model.pt", weights_only=True)
    assert saved["selection"] == "inner" and saved["inner_trials"] == inner
    assert saved["train_config"]["selection"] == "inner" and saved["train_config"]["seed"] == seed

    # the normaliser saw the trials trained on, not the inner ones
    for stream in ("iresnet50", "vggish", "mfcc"):
        mean = saved["normalizer"]["mean"][stream].numpy()
        np.testing.assert_allclose(mean, stream_frames(paths, rest, stream).mean(0), rtol=1e-5, atol=1e-5)
        assert not np.allclose(mean, stream_frames(paths, fold["train"], stream).mean(0), rtol=1e-5, atol=1e-5)

    # the inner CCC picks the epoch and stops the run; the validation fold scores the pick
    rows = history(tmp_path / "inner")
    columns = {f"{part}_ccc_{k}" for part in ("inner", "val") for k in ("valence", "arousal", "mean")}
    assert columns <= set(rows[0])
    inner_mean = [float(r["inner_ccc_mean"]) for r in rows]
    val = {k: [float(r[f"val_ccc_{k}"]) for r in rows] for k in ("valence", "arousal", "mean")}
    picked = int(np.argmax(inner_mean))  # the first maximum
    assert metrics["best_epoch"] == picked + 1
    assert len(rows) == metrics["epochs"] == min(cfg.max_epochs, picked + 1 + cfg.patience)
    for k in ("valence", "arousal", "mean"):
        assert metrics[f"ccc_{k}"] == pytest.approx(val[k][picked], abs=1e-6)

    # optimism: the epoch the validation fold itself would have picked, among all epochs trained
    peeked = int(np.argmax(val["mean"]))
    optimism = metrics["oracle_epoch_gap"]
    assert optimism["peeked_epoch"] == peeked + 1
    for k in ("valence", "arousal", "mean"):
        assert optimism[f"ccc_{k}"] == pytest.approx(val[k][peeked] - val[k][picked], abs=1e-12)
    assert optimism["ccc_mean"] >= 0  # the peeked epoch maximises the validation mean CCC
    # some seed's run stopped on the inner patience before the validation fold's best epoch: a real gap
    assert metrics["epochs"] < cfg.max_epochs and optimism["peeked_epoch"] != metrics["best_epoch"]
    assert json.loads((tmp_path / "inner" / "metrics.json").read_text())["oracle_epoch_gap"] == optimism

    # trained on exactly the rest, with the training's own random stream: a validation-mode run
    # on (the rest; the validation fold) goes through the same epochs
    plain_fold = {"fold": 0, "train": rest, "validation": fold["validation"]}
    config_plain = config(seed=seed, lr=0.05, max_epochs=12, patience=100)
    train_fold("ca", HP, plain_fold, paths, tmp_path / "rest", config_plain, device="cpu")
    for ours, theirs in zip(rows, history(tmp_path / "rest")):
        for column in ("train_loss", "lr", "val_ccc_valence", "val_ccc_arousal"):
            assert ours[column] == theirs[column], (ours["epoch"], column)

    # interrupted and resumed: the same run, bit for bit
    train_fold("ca", HP, fold, paths, tmp_path / "resumed", cfg, device="cpu", stop_after_epochs=2)
    with caplog.at_level("INFO"):
        resumed = train_fold("ca", HP, fold, paths, tmp_path / "resumed", cfg, device="cpu")
    assert "resuming ca fold 0 after epoch 2" in caplog.text
    timing = ("seconds", "windows_per_s")
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in metrics.items() if k not in timing}
    assert [{k: v for k, v in r.items() if k not in timing} for r in history(tmp_path / "resumed")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows]
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(state_dict(tmp_path / "resumed")[key], value, rtol=0, atol=0)


def test_inner_selection_without_an_annotated_inner_frame_or_without_training_groups_stops(tmp_path):
    paths, fold = inner_dataset(tmp_path)
    cfg = config(selection="inner", inner_share=0.4, refit=False)
    inner = inner_split(fold, cfg)
    unannotate(paths, inner, ("valence", "arousal"))
    with pytest.raises(ValueError, match=rf"ca fold 0 cannot be scored: its inner selection trials "
                                         rf"\({', '.join(inner)}\) have no annotated frame"):
        train_fold("ca", HP, fold, paths, tmp_path / "run", cfg, device="cpu")
    one_video = {"fold": 4, "train": ["trial0", "trial1"], "validation": ["trial8"],
                 "train_groups": [["trial0", "trial1"]]}
    with pytest.raises(ValueError, match=r"learning.train.inner_share 0.4 holds out 1 of the 1 training group\(s\) "
                                         "of fold 4"):
        train_fold("ca", HP, one_video, paths, tmp_path / "run", cfg, device="cpu")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_named_run_builds_its_fusion_model_and_old_checkpoints_still_load(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown model 'jca_small'"):  # the run's name is no architecture
        train_fold("jca_small", HP, fold, paths, tmp_path / "nameless", config(max_epochs=1), device="cpu")
    metrics = train_fold("jca_small", HP, fold, paths, tmp_path / "run", config(max_epochs=1), fusion_model="jca",
                         device="cpu")
    assert metrics["model"] == "jca_small" and metrics["fusion_model"] == "jca"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fusion_model"] == "jca"
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["model_name"] == "jca_small" and saved["fusion_model"] == "jca"
    jca = build_fusion_model("jca", saved["dims"], HP, window=40, streams=saved["streams"])
    ca = build_fusion_model("ca", saved["dims"], HP, window=40, streams=saved["streams"])
    assert set(saved["state_dict"]) == set(jca.state_dict()) != set(ca.state_dict())

    model, normalizer, cfg, smoothing = load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))
    assert set(model.state_dict()) == set(jca.state_dict())
    with h5py.File(tmp_path / "run" / "val_predictions.h5") as h5:
        written = {n: h5[n]["prediction"][:] for n in fold["validation"]}
    trials = {n: normalizer.apply(load_trial(paths[n])) for n in fold["validation"]}
    for name, trial in trials.items():
        np.testing.assert_allclose(predict_trial(model, trial, cfg, torch.device("cpu"), smoothing), written[name],
                                   atol=1e-6)

    # a model.pt from before named runs and inner selection: no fusion_model, no selection settings
    old = {k: v for k, v in saved.items() if k not in ("fusion_model", "selection", "inner_trials")}
    old["model_name"] = "jca"  # its run's name was its model's
    old["train_config"] = {k: v for k, v in saved["train_config"].items() if k not in ("selection", "inner_share")}
    torch.save(old, tmp_path / "old.pt")
    model, normalizer, cfg, smoothing = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert cfg.selection == "validation" and math.isnan(cfg.inner_share) and cfg.seed == 0
    for name, trial in trials.items():
        np.testing.assert_allclose(predict_trial(model, trial, cfg, torch.device("cpu"), smoothing), written[name],
                                   atol=1e-6)


# --- refit, seeds per fold, a normaliser in each dimension's own units (issue 22) ------------------

def test_refit_trains_the_chosen_epoch_count_on_all_training_trials_and_resumes(tmp_path, caplog):
    """With refit, the kept model is the inner split's epoch count trained again from the same
    initial weights on every training trial (inner ones included, normaliser refitted): it
    equals a plain training on those trials stopped after that many epochs."""
    paths, fold = inner_dataset(tmp_path)
    cfg = config(seed=1, selection="inner", inner_share=0.4, lr=0.05, max_epochs=12, patience=3, refit=True)
    inner = inner_split(fold, cfg)
    rest = [t for t in fold["train"] if t not in inner]
    metrics = train_fold("ca", HP, fold, paths, tmp_path / "refit", cfg, device="cpu")
    chosen = metrics["best_epoch"]
    assert 1 <= chosen < metrics["epochs"]  # picked on the inner split, as without refit
    record = metrics["refit"]
    assert record["epochs"] == chosen and len(record["train_loss"]) == chosen
    assert record["n_train_trials"] == metrics["n_train_trials"] == len(fold["train"])
    rows = history(tmp_path / "refit")
    assert record["selected_model"]["ccc_mean"] == pytest.approx(float(rows[chosen - 1]["val_ccc_mean"]), abs=1e-6)

    # the same: a validation-mode training of (rest + inner) interrupted after `chosen` epochs
    everything = {"fold": 0, "train": rest + inner, "validation": fold["validation"]}
    plain = config(seed=1, lr=0.05, max_epochs=12, patience=100)
    train_fold("ca", HP, everything, paths, tmp_path / "plain", plain, device="cpu", stop_after_epochs=chosen)
    after = torch.load(tmp_path / "plain" / "last.pt", weights_only=False)["model"]
    saved = torch.load(tmp_path / "refit" / "model.pt", weights_only=True)
    for key, value in after.items():
        torch.testing.assert_close(saved["state_dict"][key], value, rtol=0, atol=0)
    for stream in ("iresnet50", "vggish", "mfcc"):  # normaliser of every training trial
        np.testing.assert_allclose(saved["normalizer"]["mean"][stream].numpy(),
                                   stream_frames(paths, fold["train"], stream).mean(0), rtol=1e-5, atol=1e-5)
    model, normalizer, saved_cfg, smoothing = load_model(tmp_path / "refit" / "model.pt", torch.device("cpu"))
    with h5py.File(tmp_path / "refit" / "val_predictions.h5") as h5:  # the refit model's predictions are scored
        for name in fold["validation"]:
            np.testing.assert_allclose(h5[name]["prediction"][:], predict_trial(
                model, normalizer.apply(load_trial(paths[name])), saved_cfg, torch.device("cpu"), smoothing), atol=1e-6)

    # interrupted inside the refit, then resumed: the same model, bit for bit
    stopped = train_fold("ca", HP, fold, paths, tmp_path / "resumed", cfg, device="cpu",
                         stop_after_epochs=metrics["epochs"] + 1)
    assert stopped == {"interrupted_after_epoch": metrics["epochs"] + 1}
    with caplog.at_level("INFO"):
        train_fold("ca", HP, fold, paths, tmp_path / "resumed", cfg, device="cpu")
    assert f"resuming ca fold 0's refit after epoch 1 of {chosen}" in caplog.text
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(state_dict(tmp_path / "resumed")[key], value, rtol=0, atol=0)

    # without inner selection there is nothing to refit on
    assert train_fold("ca", HP, fold, paths, tmp_path / "val", config(max_epochs=2, refit=True),
                      device="cpu")["refit"] is None


def test_every_fold_of_a_seed_starts_from_its_own_weights(tmp_path):
    """The initial weights come from (seed, fold): with a learning rate of 0 the saved model
    is its initialisation, which differs between folds of one seed and equals the model
    built after seeding torch with SeedSequence([seed, fold])'s first word."""
    paths, fold = synthetic_dataset(tmp_path)
    other = {"fold": 3, "train": fold["train"], "validation": fold["validation"]}
    frozen = config(seed=2, max_epochs=1, lr=0.0)
    for f in (fold, other):
        metrics = train_fold("jca", HP, f, paths, tmp_path / f"fold{f['fold']}", frozen, device="cpu")
        seed = int(np.random.SeedSequence([2, f["fold"]]).generate_state(1)[0])
        assert metrics["init_seed"] == seed
        torch.manual_seed(seed)
        built = build_fusion_model("jca", {k: v for k, v in metrics_dims(tmp_path / f"fold{f['fold']}").items()}, HP,
                                   window=40, streams=metrics["streams"])
        for key, value in built.state_dict().items():
            torch.testing.assert_close(state_dict(tmp_path / f"fold{f['fold']}")[key], value, rtol=0, atol=0)
    a, b = state_dict(tmp_path / "fold0"), state_dict(tmp_path / "fold3")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def metrics_dims(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["dims"]


def test_the_normaliser_judges_each_dimension_in_its_own_units(tmp_path):
    """A stream mixing ten dimensions in Hz (std ~100) with a ratio (std 0.009, like eGeMAPS'
    StddevUnvoicedSegmentLength): the ratio varies and is kept (the old rule, 1e-4 x the RMS of
    the stream's spreads = 0.0095, zeroed it), a dimension with one value is neutralised, so is
    one that wobbles at float32's rounding level around 440."""
    rng = np.random.default_rng(4)
    n = 400
    hz = 200 + 100 * rng.standard_normal((n, 10))
    ratio = 0.05 + 0.009 * rng.standard_normal((n, 1))
    flat = np.full((n, 1), 3.0)
    wobble = (440 + 1e-5 * rng.standard_normal((n, 1))).astype(np.float32)  # float32: 440 +- one ulp
    x = np.hstack([hz, ratio, flat, wobble]).astype(np.float32)
    trials = [TrialData(f"t{i}", {"mixed": x[i * 100:(i + 1) * 100]}, np.zeros((100, 2)), np.ones((100, 2), bool))
              for i in range(4)]
    normalizer = Normalizer.fit(trials)
    assert np.flatnonzero(normalizer.constant["mixed"]).tolist() == [11, 12]
    assert normalizer.summary() == {"mixed": 2}
    shown = normalizer.apply(trials[0]).streams["mixed"]
    np.testing.assert_allclose(shown[:, 10], (x[:100, 10] - x[:, 10].astype(np.float64).mean())
                               / x[:, 10].astype(np.float64).std(), rtol=1e-4, atol=1e-4)
    assert np.all(shown[:, 11:] == 0)
    spreads = x.astype(np.float64).std(axis=0)  # the old rule, for the record: the ratio fell below it
    assert spreads[10] <= 1e-4 * np.sqrt(np.mean(spreads**2))


class MiscomputedLinear(torch.nn.Linear):
    """A layer whose bfloat16 kernel is wrong (as oneDNN's are for some shapes on some CPUs)."""

    def forward(self, x):
        y = torch.nn.Linear.forward(self, x)
        return -2 * y if torch.is_autocast_enabled(x.device.type) else y


def test_bf16_training_that_disagrees_with_float32_falls_back_and_records_it(tmp_path, monkeypatch, caplog):
    from vafusion.learning import train as train_module

    paths, fold = synthetic_dataset(tmp_path)
    healthy = train_fold("ca", HP, fold, paths, tmp_path / "bf16", config(max_epochs=1, precision="bfloat16"),
                         device="cpu")
    assert healthy["training_precision"] == "bfloat16"
    built = train_module.build_fusion_model

    def with_a_miscomputed_layer(*args, **kwargs):
        model = built(*args, **kwargs)
        model.project_visual[0].__class__ = MiscomputedLinear
        return model

    monkeypatch.setattr(train_module, "build_fusion_model", with_a_miscomputed_layer)
    with caplog.at_level("WARNING"):
        broken = train_fold("ca", HP, fold, paths, tmp_path / "broken", config(max_epochs=1, precision="bfloat16"),
                            device="cpu")
        exact = train_fold("ca", HP, fold, paths, tmp_path / "f32", config(max_epochs=1, precision="float32"),
                           device="cpu")
    assert broken["training_precision"].startswith("float32 (bfloat16 autocast DISAGREES")
    assert "MiscomputedLinear (512 -> 128)" in caplog.text
    assert broken["ccc_mean"] == exact["ccc_mean"]  # it trained in float32 throughout


def test_an_iaca_model_saved_before_the_unit_norm_gate_is_refused_not_misread(tmp_path):
    """Its gate weights were trained on unnormalised features: loaded into today's gate they
    would weigh the candidates differently, silently. It is refused with what to do."""
    paths, fold = synthetic_dataset(tmp_path)
    train_fold("jca_iaca", HP, fold, paths, tmp_path / "run", config(max_epochs=1), device="cpu")
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))  # today's loads
    saved["hparams"] = {k: v for k, v in saved["hparams"].items() if k != "iaca_temperature_av"}
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt: an IACA model trained before its gates read unit-norm features.*"
                                         "retrain it"):
        load_model(tmp_path / "old.pt", torch.device("cpu"))
