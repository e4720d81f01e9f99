"""Learning stage: CCC, alignment rules, folds, windows, every model's forward/backward,
the IACA gates, and deterministic, resumable training on a small synthetic dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from vafusion.learning.align import align_trial, fit_length
from vafusion.learning.ccc import ccc, ccc_loss, ccc_torch
from vafusion.learning.data import TrialData, load_trial, make_batch, window_starts
from vafusion.learning.missing_audio import drop_audio, missing_frames
from vafusion.learning.predict import fold_ccc, load_model, predict_trial
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold
from vafusion.models.iaca import IacaGate

DIMS = {"iresnet50": 512, "vggish": 128, "mfcc": 39}
LEARNING = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())["learning"]


# --- CCC ---------------------------------------------------------------------------------------

def reference_ccc(x, y):
    """Lin (1989) via Pearson's r: 2 r sx sy / (sx^2 + sy^2 + (mx - my)^2)."""
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = np.std(x), np.std(y)
    return 2 * r * sx * sy / (sx**2 + sy**2 + (np.mean(x) - np.mean(y)) ** 2)


def test_ccc_matches_the_formula_and_its_special_cases(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    y = 0.6 * x + rng.normal(scale=0.5, size=500) + 0.2
    assert ccc(x, y) == pytest.approx(reference_ccc(x, y), abs=1e-12)
    assert ccc(x, x) == pytest.approx(1.0)
    centred = x - x.mean()
    assert ccc(centred, -centred) == pytest.approx(-1.0)
    # perfectly correlated but scaled and shifted: penalised, as the formula says
    var = centred.var()
    assert ccc(centred, 2 * centred + 1) == pytest.approx(2 * 2 * var / (var + 4 * var + 1), abs=1e-12)
    assert ccc(np.full(500, 0.3), y) == pytest.approx(0.0, abs=1e-15)  # a constant prediction scores 0
    assert math.isnan(ccc(np.full(5, 0.3), np.full(5, 0.3)))
    assert math.isnan(ccc(np.array([]), np.array([])))
    assert "NaN" in caplog.text
    t = torch.tensor
    valid = torch.ones(500, dtype=torch.bool)
    assert float(ccc_torch(t(x), t(y), valid)) == pytest.approx(ccc(x, y), abs=1e-6)


def test_ccc_loss_uses_valid_frames_only():
    pred = torch.zeros(1, 4, 2)
    pred[0, :, 0] = torch.tensor([0.1, 0.2, 0.3, 0.9])
    pred[0, :, 1] = torch.tensor([0.5, -0.5, 0.5, 0.0])
    target = pred.clone()
    target[0, 3] = torch.tensor([-5.0, -5.0])  # unannotated frame, wildly off
    valid = torch.ones(1, 4, 2, dtype=torch.bool)
    valid[0, 3] = False
    assert float(ccc_loss(pred, target, valid)) == pytest.approx(0.0, abs=1e-6)


# --- alignment ---------------------------------------------------------------------------------

def test_fit_length_trims_from_the_rear_and_pads_with_the_last_row():
    x = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(fit_length(x, 3), x[:3])
    np.testing.assert_array_equal(fit_length(x, 7), np.vstack([x, x[4], x[4]]))
    np.testing.assert_array_equal(fit_length(x, 5), x)


def write_features(tmp_path, n_frames: int):
    paths = {}
    for name, dim in DIMS.items():
        paths[name] = tmp_path / f"{name}.h5"
        with h5py.File(paths[name], "w") as h5:
            h5["features"] = np.arange(n_frames * dim, dtype=np.float32).reshape(n_frames, dim)
    with h5py.File(tmp_path / "faces.h5", "w") as h5:
        h5["face_found"] = np.arange(n_frames) % 3 != 0
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"video_fps": 25.0, "audio_missing": False}))
    return paths, meta


def write_labels(path, valence, arousal):
    with h5py.File(path, "w") as h5:
        for name, v in (("valence", valence), ("arousal", arousal)):
            v = np.asarray(v, np.float32)
            h5[name] = v
            h5[f"valid_{name}"] = v != -5
        h5.attrs["annotation"] = f"{path}.txt"
    return path


@pytest.mark.parametrize("n_video", [6, 10])  # features shorter and longer than the labels
def test_align_trial_pads_trims_and_masks_per_target(tmp_path, n_video):
    features, meta = write_features(tmp_path, n_video)
    labels = write_labels(tmp_path / "labels.h5", [0.1, -5, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                          [0.1, 0.2, -5, 0.4, 0.5, 0.6, 0.7, -5])
    align_trial(tmp_path / "a.h5", trial="t", partition="train", features=features, faces=tmp_path / "faces.h5", audio_meta=meta, labels=labels)
    with h5py.File(tmp_path / "a.h5") as h5:
        assert h5["iresnet50"].shape == (8, 512) and h5["mfcc"].shape == (8, 39)
        source = np.arange(n_video * 39, dtype=np.float32).reshape(n_video, 39)
        np.testing.assert_array_equal(h5["mfcc"][:], fit_length(source, 8))
        assert h5["valid_valence"][:].tolist() == [True, False] + [True] * 6
        assert h5["valid_arousal"][:].tolist() == [True, True, False] + [True] * 4 + [False]
        assert h5["valence"][1] == -5  # frames are never dropped: row k stays frame k
        found = h5["face_found"][:]
        expected = (np.arange(min(8, n_video)) % 3 != 0).tolist() + [False] * max(0, 8 - n_video)
        assert found.tolist() == expected
        assert h5.attrs["n_video_frames"] == n_video


def test_test_trial_length_is_the_video_length(tmp_path):
    features, meta = write_features(tmp_path, 7)
    align_trial(tmp_path / "a.h5", trial="t", partition="test", features=features, faces=tmp_path / "faces.h5", audio_meta=meta, labels=None)
    with h5py.File(tmp_path / "a.h5") as h5:
        assert h5["vggish"].shape == (7, 128) and not h5["valid_valence"][:].any()


# --- windows -------------------------------------------------------------------------

def test_windows_end_flush_and_short_trials_are_padded():
    assert window_starts(1000, 300, 200) == [0, 200, 400, 600, 700]
    assert window_starts(300, 300, 200) == [0]
    assert window_starts(120, 300, 200) == [0]
    trial = TrialData("t", {k: np.ones((120, d), np.float32) for k, d in DIMS.items()},
                      np.zeros((120, 2), np.float32), np.ones((120, 2), bool))
    batch = make_batch([(trial, 0)], 300)
    assert batch.streams["mfcc"].shape == (1, 300, 39)
    assert batch.padding[0, :120].logical_not().all() and batch.padding[0, 120:].all()
    assert batch.valid[0, 120:].logical_not().all()


# --- models ------------------------------------------------------------------------------------

def test_iaca_gate_weights_read_the_direction_of_a_frame_not_its_size():
    """The gates' logits come from unit-norm frames (T = 0.1 was chosen for unit-norm
    features), so scaling the attended features by 0.1 or 30 leaves every gate weight as it
    is, while the gated features themselves (Eq. 7-9) scale with them."""
    torch.manual_seed(3)
    gate = IacaGate(16, temperature=0.1)
    with torch.no_grad():
        for w in (gate.W_gl_a, gate.W_gl_v, gate.W_gl_av):
            w.normal_()
        gate.joint.bias.zero_()  # the joint FC's bias is the one term that does not scale with the inputs
    own_a, own_v, att_a, att_v = (torch.randn(2, 7, 16) for _ in range(4))
    _, reference = gate(own_a, own_v, att_a, att_v)
    assert 0.05 < float(reference["audio"][..., 0].detach().std())  # the weights differ from frame to frame
    for c in (0.1, 30.0):
        fused, gates = gate(c * own_a, c * own_v, c * att_a, c * att_v)
        for stage in ("audio", "visual", "fusion"):
            torch.testing.assert_close(gates[stage], reference[stage], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused, c * gate(own_a, own_v, att_a, att_v)[0], rtol=1e-4, atol=1e-5)


# --- training ----------------------------------------------------------------------------------

def synthetic_dataset(tmp_path, n_trials=8, length=90):
    """Trials whose labels are a smooth function of their features (learnable)."""
    rng = np.random.default_rng(0)
    mixes = {name: rng.normal(size=(2, dim)) for name, dim in DIMS.items()}  # one mapping for all trials
    paths = {}
    for i in range(n_trials):
        t = np.arange(length) / 25
        v = 0.6 * np.sin(2 * np.pi * (0.3 + 0.05 * i) * t + i)
        a = 0.6 * np.cos(2 * np.pi * (0.2 + 0.04 * i) * t + i)
        path = tmp_path / f"trial{i}.h5"
        with h5py.File(path, "w") as h5:
            for name, dim in DIMS.items():
                h5[name] = (np.stack([v, a], 1) @ mixes[name] + 0.1 * rng.normal(size=(length, dim))).astype(np.float32)
            h5["valence"], h5["arousal"] = v.astype(np.float32), a.astype(np.float32)
            h5["valid_valence"], h5["valid_arousal"] = np.ones(length, bool), np.ones(length, bool)
            h5.attrs["trial"] = f"trial{i}"
        paths[f"trial{i}"] = path
    # one trial per video: each training trial its own group (make_folds' train_groups)
    fold = {"fold": 0, "train": [f"trial{i}" for i in range(6)], "validation": ["trial6", "trial7"],
            "train_groups": [[f"trial{i}"] for i in range(6)]}
    return paths, fold


SILENCE = {"vggish": np.full(128, -3.0, np.float32), "mfcc": np.full(39, 2.0, np.float32)}
CFG = TrainConfig.from_dict({**LEARNING["train"], "window": 40, "hop": 20, "batch_size": 4, "lr": 3e-3,
                             "max_epochs": 12, "warmup_epochs": 1, "patience": 12, "selection": "validation",
                             "missing_audio": {"shares": [0.0, 0.5], "patterns": ["contiguous"], "fill": "zeros"}},
                            seed=0)


def test_training_learns_is_deterministic_and_resumes(tmp_path):
    paths, fold = synthetic_dataset(tmp_path)
    hp = LEARNING["cross_attention"]
    first = train_fold("ca_iaca", hp, fold, paths, tmp_path / "run1", CFG, audio_fill=SILENCE, device="cpu")
    second = train_fold("ca_iaca", hp, fold, paths, tmp_path / "run2", CFG, audio_fill=SILENCE, device="cpu")
    assert first["ccc_mean"] > 0.5, first  # it learns the synthetic mapping
    assert first["ccc_mean"] == second["ccc_mean"]
    # the missing-audio test: share 0 is the intact model's CCC, silencing half the audio moves it
    missing = first["missing_audio"]["contiguous"]
    assert missing["all_trials"]["0"] == {k: first[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean")}
    # share 0.5: the model's predictions on the trials with half their audio frames given the
    # fill, scored with the plain CCC formula, here
    model, normalizer, saved_cfg, smoothing = load_model(tmp_path / "run1" / "model.pt", torch.device("cpu"))
    val = [load_trial(paths[n]) for n in fold["validation"]]
    pred = {}
    for trial in val:
        dropped = missing_frames(trial, 0.5, "contiguous", CFG.seed)
        assert dropped.sum() == round(0.5 * trial.length)
        pred[trial.name] = predict_trial(model, normalizer.apply(drop_audio(trial, dropped, SILENCE)), saved_cfg,
                                         torch.device("cpu"), smoothing)
    for j, target in enumerate(("valence", "arousal")):
        expected = reference_ccc(np.concatenate([pred[t.name][:, j] for t in val]),
                                 np.concatenate([t.labels[:, j] for t in val]))
        assert missing["all_trials"]["0.5"][f"ccc_{target}"] == pytest.approx(expected, abs=1e-6)
    longest = max(val, key=lambda t: t.length)
    assert missing["longest_trial"]["0.5"]["ccc_valence"] == pytest.approx(
        reference_ccc(pred[longest.name][:, 0], longest.labels[:, 0]), abs=1e-6)
    # the audio is informative here: losing half of it costs CCC
    assert missing["all_trials"]["0.5"]["ccc_mean"] < first["ccc_mean"] - 0.01
    for name in ("model.pt", "metrics.json", "history.csv", "val_predictions.h5"):
        assert (tmp_path / "run1" / name).exists()
    assert not (tmp_path / "run1" / "last.pt").exists()

    # interrupted after 5 epochs, then resumed: the same model as the uninterrupted run
    stopped = train_fold("ca_iaca", hp, fold, paths, tmp_path / "run3", CFG, audio_fill=SILENCE, device="cpu",
                         stop_after_epochs=5)
    assert stopped == {"interrupted_after_epoch": 5}
    assert (tmp_path / "run3" / "last.pt").exists()
    resumed = train_fold("ca_iaca", hp, fold, paths, tmp_path / "run3", CFG, audio_fill=SILENCE, device="cpu")
    assert resumed["ccc_mean"] == first["ccc_mean"] and resumed["epochs"] == first["epochs"]
    a = torch.load(tmp_path / "run1" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run3" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_fold_without_valid_frames_for_a_target_reports_nan(tmp_path):
    paths, _ = synthetic_dataset(tmp_path, n_trials=2)
    trials = [load_trial(p) for p in paths.values()]
    for t in trials:
        t.valid[:, 1] = False  # no arousal annotation at all
    predictions = {t.name: np.zeros((t.length, 2), np.float32) + np.linspace(0, 1, t.length)[:, None] for t in trials}
    scores = fold_ccc(predictions, trials)
    assert math.isnan(scores["ccc_arousal"]) and not math.isnan(scores["ccc_valence"])
    assert math.isnan(scores["ccc_mean"])  # never a mean of one target passed off as both


# --- missing audio (Praveen & Alam, Sec. 4C) ---------------------------------------------------

def test_missing_frames_are_contiguous_or_scattered_and_the_same_for_every_model(tmp_path):
    paths, _ = synthetic_dataset(tmp_path, n_trials=1, length=200)
    trial = load_trial(paths["trial0"])
    for share in (0.1, 0.4, 0.8):
        runs = {}
        for pattern in ("contiguous", "scattered"):
            dropped = missing_frames(trial, share, pattern, seed=0)
            assert dropped.sum() == round(share * 200)
            runs[pattern] = int(np.sum(np.diff(dropped.astype(int)) == 1) + dropped[0])  # segments
            np.testing.assert_array_equal(dropped, missing_frames(trial, share, pattern, seed=0))
        assert runs["contiguous"] == 1 and runs["scattered"] > 5
    assert not missing_frames(trial, 0.0, "scattered", seed=0).any()


def test_dropped_audio_frames_get_the_silence_features(tmp_path):
    paths, _ = synthetic_dataset(tmp_path, n_trials=1, length=50)
    trial = load_trial(paths["trial0"])
    dropped = np.zeros(50, bool)
    dropped[[3, 10, 11, 40]] = True
    out = drop_audio(trial, dropped, SILENCE)
    for stream in ("vggish", "mfcc"):
        np.testing.assert_array_equal(out.streams[stream][dropped], np.tile(SILENCE[stream], (4, 1)))
        np.testing.assert_array_equal(out.streams[stream][~dropped], trial.streams[stream][~dropped])
    np.testing.assert_array_equal(out.streams["iresnet50"], trial.streams["iresnet50"])  # the face is kept
    assert not np.array_equal(out.streams["vggish"], trial.streams["vggish"])
