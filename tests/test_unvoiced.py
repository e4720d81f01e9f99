"""Speech presence in learning: the ``unvoiced`` missing-audio pattern, the training setting
that treats unvoiced frames' audio as missing (training and every prediction), and the
zero-training valence/arousal baseline of a face model."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from test_learning import CFG, LEARNING, SILENCE, synthetic_dataset
from vafusion.learning.baseline import predict_baseline, score_baseline
from vafusion.learning.ccc import ccc
from vafusion.learning.data import load_trial, open_trial, with_unvoiced_filled
from vafusion.learning.missing_audio import missing_frames
from vafusion.learning.predict import load_model, predict_test_trials
from vafusion.learning.settings import TrainConfig, Voice
from vafusion.learning.train import train_fold


def add_presence(paths: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``speech`` column in each aligned file: voiced stretches and pauses."""
    rng = np.random.default_rng(seed)
    presence = {}
    for name, path in paths.items():
        with h5py.File(path, "r+") as h5:
            n = len(h5["valence"])
            p = np.clip(np.sin(np.arange(n) / 7.0 + rng.uniform(0, 6)) + rng.normal(0, 0.1, n), 0, 1)
            h5["speech"] = p[:, None].astype(np.float32)
            presence[name] = h5["speech"][:, 0]
    return presence


def test_the_unvoiced_pattern_drops_the_least_speech_frames_below_the_threshold_only(tmp_path):
    paths, _ = synthetic_dataset(tmp_path, n_trials=1, length=200)
    presence = add_presence(paths)["trial0"]
    trial = load_trial(paths["trial0"], ["mfcc"])
    below = int((presence < 0.5).sum())
    assert 20 < below < 180
    for share in (0.0, 0.1, 0.4, 0.9):
        dropped = missing_frames(trial, share, "unvoiced", seed=0, presence=presence, threshold=0.5)
        # plain: sort the frames by presence, keep those below the threshold, take the first n
        order = sorted(range(200), key=lambda k: (presence[k], k))
        expected = [k for k in order if presence[k] < 0.5][:round(share * 200)]
        assert sorted(np.flatnonzero(dropped).tolist()) == sorted(expected)
        assert not (dropped & (presence >= 0.5)).any()  # a voiced frame is never dropped
    assert missing_frames(trial, 0.9, "unvoiced", 0, presence, 0.5).sum() == below  # saturates at the natural share
    with pytest.raises(ValueError, match="needs the trial's speech presence"):
        missing_frames(trial, 0.5, "unvoiced", seed=0)


def test_unvoiced_frames_read_as_the_fill_in_stored_and_loaded_trials(tmp_path):
    paths, _ = synthetic_dataset(tmp_path, n_trials=1, length=90)
    presence = add_presence(paths)["trial0"]
    voice = Voice("speech", 0.5)
    stored = with_unvoiced_filled(open_trial(paths["trial0"], ["iresnet50", "mfcc"]), voice, {"mfcc": SILENCE["mfcc"]},
                                  paths["trial0"])
    loaded = with_unvoiced_filled(load_trial(paths["trial0"], ["iresnet50", "mfcc"]), voice,
                                  {"mfcc": SILENCE["mfcc"]}, paths["trial0"])
    raw = load_trial(paths["trial0"], ["iresnet50", "mfcc"])
    for rows in (stored.rows(10, 70), {s: x[10:70] for s, x in loaded.streams.items()}):
        for k in range(60):
            frame = 10 + k
            expected = SILENCE["mfcc"] if presence[frame] < 0.5 else raw.streams["mfcc"][frame]
            np.testing.assert_array_equal(rows["mfcc"][k], expected)
            np.testing.assert_array_equal(rows["iresnet50"][k], raw.streams["iresnet50"][frame])  # video untouched


def test_training_with_unvoiced_audio_masks_training_validation_and_test_predictions(tmp_path):
    paths, fold = synthetic_dataset(tmp_path, n_trials=8, length=90)
    presence = add_presence(paths)
    cfg = TrainConfig.from_dict({**{k: v for k, v in vars(CFG).items() if k not in ("seed", "missing_audio")},
                                 "max_epochs": 3, "unvoiced_audio": {"stream": "speech", "threshold": 0.5},
                                 "missing_audio": {"shares": [0.0, 0.5], "patterns": ["unvoiced"], "fill": "zeros",
                                                   "voice": {"stream": "speech", "threshold": 0.5}}}, seed=0)
    streams = {"audio": ["mfcc"], "visual": ["iresnet50"]}
    metrics = train_fold("jca", LEARNING["cross_attention"], fold, paths, tmp_path / "run", cfg, streams=streams,
                         audio_fill=SILENCE, device="cpu")
    natural = np.mean(np.concatenate([presence[t] for t in fold["validation"]]) < 0.5)
    assert metrics["missing_audio"]["unvoiced_share"] == pytest.approx(natural)
    # the unvoiced frames are filled already: dropping them again changes nothing
    unvoiced = metrics["missing_audio"]["unvoiced"]["all_trials"]
    assert unvoiced["0.5"] == pytest.approx(unvoiced["0"])
    model, norm, saved_cfg, smoothing = load_model(tmp_path / "run" / "model.pt", torch.device("cpu"))
    assert saved_cfg.unvoiced_audio == Voice("speech", 0.5)
    np.testing.assert_array_equal(model.unvoiced_fill["mfcc"], SILENCE["mfcc"])
    # the test trials are predicted as trained: a trial's voiced rows matter, its unvoiced ones not
    test = {"trial6": paths["trial6"]}
    predict_test_trials([tmp_path / "run" / "model.pt"], test, tmp_path / "pred", device="cpu")
    first = np.loadtxt(tmp_path / "pred" / "trial6.txt", delimiter=",", skiprows=1)
    with h5py.File(paths["trial6"], "r+") as h5:  # new audio where unvoiced: the prediction must not move
        mfcc = h5["mfcc"][:]
        mfcc[presence["trial6"] < 0.5] += 50.0
        h5["mfcc"][...] = mfcc
    predict_test_trials([tmp_path / "run" / "model.pt"], test, tmp_path / "pred", device="cpu")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "pred" / "trial6.txt", delimiter=",", skiprows=1), first,
                               atol=1e-6)


def test_a_face_models_own_valence_arousal_columns_are_scored_as_a_run(tmp_path):
    paths, fold = synthetic_dataset(tmp_path, n_trials=8, length=90)
    rng = np.random.default_rng(1)
    for path in paths.values():  # a 10-column face model: 8 logits, then valence and arousal (HSEmotion's layout)
        with h5py.File(path, "r+") as h5:
            va = np.stack([h5["valence"][:], h5["arousal"][:]], 1) + rng.normal(0, 0.3, (90, 2))
            h5["enet"] = np.concatenate([rng.normal(size=(90, 8)), va], 1).astype(np.float32)
    metrics = score_baseline("enet_va", "enet", [8, 9], fold, paths, seed=0, out_dir=tmp_path / "b")
    pooled = {"valence": [], "label": []}
    for name in fold["validation"]:
        with h5py.File(paths[name]) as h5:
            pooled["valence"].append(h5["enet"][:, 8])
            pooled["label"].append(h5["valence"][:])
    # pooled over the fold's validation frames, as the challenge's CCC
    assert metrics["ccc_valence"] == pytest.approx(ccc(np.concatenate(pooled["valence"]),
                                                       np.concatenate(pooled["label"])), abs=1e-5)
    assert "no training" in metrics["baseline"]["what"] and metrics["selection"] is None
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["ccc_mean"] == pytest.approx(metrics["ccc_mean"])
    predict_baseline("enet", [8, 9], {"trial6": paths["trial6"]}, tmp_path / "test")
    rows = np.loadtxt(tmp_path / "test" / "trial6.txt", delimiter=",", skiprows=1)
    with h5py.File(paths["trial6"]) as h5:
        np.testing.assert_allclose(rows, h5["enet"][:, 8:10], atol=1e-6)
    with pytest.raises(ValueError, match="valence_arousal names"):
        score_baseline("enet_va", "enet", [8, 12], fold, paths, seed=0, out_dir=tmp_path / "c")
