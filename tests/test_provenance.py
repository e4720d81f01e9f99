"""Predicting with the features the models were trained on: the record training stores in
model.pt (from real feature files, through the aligned files), its comparison with a run's
config, and a run with learning.trained_run that stops at planning when they differ."""

from __future__ import annotations

import copy
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml

import vafusion.weights
from conftest import REPO, make_video, snakemake
from vafusion.audio import extract_audio
from vafusion.faces import FaceTrackWriter
from vafusion.features.iresnet import IresnetParams, extract_iresnet50
from vafusion.features.mfcc import MfccParams, extract_mfcc
from vafusion.features.vggish import VggishParams, extract_vggish
from vafusion.learning.align import align_trial
from vafusion.learning.provenance import (RANDOM_INIT, RECORD_KEY, aligned_record, cached_sha256,
                                          check_features, config_record, read_record, record_differences,
                                          trained_run_problems)
from vafusion.learning.predict import load_model
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold

STREAMS = ("iresnet50", "vggish", "mfcc")  # the default stream set (config.yaml learning.streams)


def repo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A trained run in miniature, made as the workflow makes it: the real extractors with
    config.yaml's settings (as the feature rules pass them), two aligned trials, and a model
    trained on them, whose record the train_model adapter's calls add:
    {"video", "aligned": [a, b], "model": model.pt with its record}."""
    tmp = tmp_path_factory.mktemp("provenance")
    config = repo_config()
    (tmp / "videos").mkdir()
    video = make_video(tmp / "videos" / "clip.mp4", seconds=1.0)
    meta = extract_audio(video, tmp / "clip.wav", tmp / "clip.json")
    with h5py.File(tmp / "faces.h5", "w") as h5:  # no face found: the network still runs on every frame
        writer = FaceTrackWriter(h5)
        for t in meta["frame_times"]:
            writer.add(t, None)
        writer.flush()
    seed = config["features"]["random_init_seed"]
    paths = {name: tmp / f"{name}.h5" for name in STREAMS}
    extract_mfcc(tmp / "clip.wav", meta, paths["mfcc"],
                 MfccParams(**{**config["features"]["mfcc"], "sample_rate": config["media"]["sample_rate"]}))
    extract_vggish(tmp / "clip.wav", meta, paths["vggish"], VggishParams(**config["features"]["vggish"]),
                   weights=None, seed=seed)
    extract_iresnet50(tmp / "faces.h5", paths["iresnet50"], IresnetParams(**config["features"]["iresnet50"]),
                      weights=None, seed=seed)
    n = len(meta["frame_times"])
    with h5py.File(tmp / "labels.h5", "w") as h5:
        h5["valence"] = np.sin(np.arange(n) / 4).astype(np.float32)
        h5["arousal"] = np.cos(np.arange(n) / 5).astype(np.float32)
    aligned = {}
    for trial, partition in (("a", "train"), ("b", "validation")):
        aligned[trial] = tmp / f"{trial}.h5"
        align_trial(aligned[trial], trial=trial, partition=partition, features=paths, faces=tmp / "faces.h5", audio_meta=tmp / "clip.json",
                    labels=tmp / "labels.h5")
    # workflow/scripts/train_model.py
    fold = {"fold": 0, "train": ["a"], "validation": ["b"]}
    record = aligned_record([aligned[name] for name in fold["train"] + fold["validation"]], STREAMS)
    cfg = TrainConfig.from_dict({**config["learning"]["train"], "window": n, "hop": n, "max_epochs": 1,
                                 "selection": "validation"}, seed=0)  # one training trial: nothing to hold out
    train_fold("tcn_transformer", config["learning"]["tcn_transformer"], fold, aligned, tmp / "model", cfg,
               device="cpu", feature_provenance=record)
    return {"video": video, "aligned": list(aligned.values()), "model": tmp / "model" / "model.pt"}


@pytest.fixture(scope="module")
def record(features):
    return read_record(features["model"])


def trained_model(features, path, record: dict | None):
    """A copy of the trained model.pt, with ``record`` (None: as before records were kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = torch.load(features["model"], weights_only=True)
    if record is None:
        saved.pop(RECORD_KEY)
    else:
        saved[RECORD_KEY] = record
    torch.save(saved, path)
    return path


def no_hashing(path):
    raise AssertionError(f"{path} hashed although nothing needs it")


def test_training_record_keeps_each_streams_settings_and_weights(features, record, tmp_path):
    assert record == aligned_record(features["aligned"], STREAMS)
    assert record["trials"] == 2 and set(record["streams"]) == set(STREAMS)
    vggish = record["streams"]["vggish"]
    assert vggish["params"]["final_relu"] is True and vggish["params"]["sample_rate"] == 16000
    for network in ("vggish", "iresnet50"):
        entry = record["streams"][network]
        assert entry["weights_sha256"] == RANDOM_INIT and entry["weights_seed"] == 0
    assert record["streams"]["mfcc"]["weights_sha256"] == "" and record["streams"]["mfcc"]["params"]["n_ceps"] == 13
    # the trained model still loads; a model.pt from before records is told apart
    load_model(features["model"], torch.device("cpu"))
    assert read_record(trained_model(features, tmp_path / "old.pt", None)) is None


def test_unchanged_config_matches_the_record(record):
    config = repo_config()
    assert record_differences(record, config_record(config, no_hashing, [record])) == []
    # settings that change only the speed are not compared; neither is the device
    config["features"]["vggish"]["batch_size"] = 512
    config["features"]["iresnet50"].update(batch_size=256, channels_last=False)
    config["features"]["device"] = "cuda"
    assert record_differences(record, config_record(config, no_hashing, [record])) == []


@pytest.mark.parametrize("change, expected", [
    (lambda c, w: c["features"]["vggish"].update(final_relu=False),
     [("vggish", "features.vggish.final_relu", "true", "false")]),
    (lambda c, w: c["features"]["mfcc"].update(n_ceps=20), [("mfcc", "features.mfcc.n_ceps", "13", "20")]),
    (lambda c, w: c["media"].update(sample_rate=8000),
     [("mfcc", "media.sample_rate", "16000", "8000"), ("vggish", "media.sample_rate", "16000", "8000")]),
    (lambda c, w: c["features"].update(random_init_seed=1),
     [("iresnet50", "features.random_init_seed", "0", "1"), ("vggish", "features.random_init_seed", "0", "1")]),
    (lambda c, w: c["weights"].update(iresnet50=str(w)),
     [("iresnet50", "weights.iresnet50", "random-init (seed 0)", "'{w}'")]),
], ids=["vggish-final-relu", "mfcc-n-ceps", "sample-rate", "random-init-seed", "weights-file"])
def test_changed_setting_or_weights_is_named_with_both_values(record, tmp_path, change, expected):
    weights = tmp_path / "backbone.pth"
    weights.write_bytes(b"not hashed: the models saw random-init features")
    config = repo_config()
    change(config, weights)
    found = record_differences(record, config_record(config, no_hashing, [record]))
    assert found == [tuple(part.format(w=weights) for part in row) for row in expected]


def test_weights_files_are_compared_by_sha256_and_hashed_once(record, tmp_path, monkeypatch):
    """Models trained on a weights file: the same file passes (hashed once, then from the
    cache), another file of the same size stops, and so does the same file rewritten."""
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"A" * 4096)
    b.write_bytes(b"B" * 4096)
    trained = copy.deepcopy(record)
    trained["streams"]["iresnet50"].update(weights="/elsewhere/a.pth", weights_sha256=vafusion.weights.sha256sum(a),
                                           weights_seed=-1)
    hashed = []
    real = vafusion.weights.sha256sum
    monkeypatch.setattr(vafusion.weights, "sha256sum", lambda p: hashed.append(p) or real(p))
    cache = tmp_path / "cache" / "sha256.json"

    def differences(path):
        config = repo_config()
        config["weights"]["iresnet50"] = str(path)
        return record_differences(trained, config_record(config, lambda p: cached_sha256(p, cache), [trained]))

    assert differences(a) == [] and differences(a) == [] and len(hashed) == 1
    (found,) = differences(b)
    assert found[:2] == ("iresnet50", "weights.iresnet50")
    assert "'/elsewhere/a.pth' (sha256 " in found[2] and f"'{b}' (sha256 {real(b)[:16]}" in found[3]
    a.write_bytes(b"B" * 4096)  # same size, same path, other bytes
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert len(differences(a)) == 1 and len(hashed) == 3


def test_aligned_files_with_different_features_make_no_record(features, tmp_path):
    other = tmp_path / "c.h5"
    shutil.copy(features["aligned"][1], other)
    with h5py.File(other, "a") as h5:
        kept = json.loads(h5.attrs["vggish_provenance"])
        kept["params"] = json.dumps({**json.loads(kept["params"]), "final_relu": False})
        h5.attrs["vggish_provenance"] = json.dumps(kept)
    with pytest.raises(ValueError, match=r"(?s)different settings.*vggish: features.vggish.final_relu: true in the "
                                         r"first, false in the second"):
        aligned_record([features["aligned"][0], other], STREAMS)
    with h5py.File(other, "a") as h5:
        del h5.attrs["mfcc_provenance"]
    with pytest.raises(ValueError, match="keeps no provenance of its mfcc features"):
        aligned_record([other], STREAMS)
    # the prediction job's check: the models' record against the test trials' own files
    model = trained_model(features, tmp_path / "model.pt", aligned_record(features["aligned"], STREAMS))
    check_features([model], features["aligned"])
    shutil.copy(features["aligned"][1], other)
    with h5py.File(other, "a") as h5:
        kept = json.loads(h5.attrs["iresnet50_provenance"])
        h5.attrs["iresnet50_provenance"] = json.dumps({**kept, "weights_seed": 7})
    with pytest.raises(ValueError, match="iresnet50: features.random_init_seed: the models were trained with 0, "
                                         "this run has 7"):
        check_features([model], [other])


def test_trained_run_without_a_record_is_refused(features, record, tmp_path):
    models = [trained_model(features, tmp_path / "models" / "jca" / f"fold{k}" / "model.pt", None) for k in range(2)]
    models.append(trained_model(features, tmp_path / "models" / "jca" / "fold2" / "model.pt", record))
    message = trained_run_problems(tmp_path, models, repo_config())
    assert f"{models[0]} and 1 more model file keep no record of the features" in message


def test_predict_stops_at_planning_when_features_differ_from_the_models(features, record, tmp_path):
    """`snakemake -n predict` with a trained run: the training config plans the prediction;
    VGGish without its final ReLU and another IResNet-50 weights file stop the planning with
    the stream, the setting and both values, before any job."""
    trained = tmp_path / "trained"
    for fold in range(2):
        trained_model(features, trained / "models" / "tcn_transformer" / f"fold{fold}" / "model.pt", record)
    videos = tmp_path / "new videos"
    videos.mkdir()
    shutil.copy(features["video"], videos / "new.mp4")
    config = repo_config()
    config["data"] = {"videos": str(videos), "annotations": None, "cropped_aligned": None, "test_trials": None}
    config["output"] = str(tmp_path / "predicted")
    config["learning"].update(models=["tcn_transformer"], trained_run=str(trained))

    def plan(config):
        (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config))
        proc = snakemake(tmp_path, "--configfile", str(tmp_path / "predict.yaml"), "-n", "predict", check=False)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = plan(config)
    assert rc == 0, out
    assert "predict_test" in out and "extract_vggish" in out

    weights = tmp_path / "other backbone.pth"
    weights.write_bytes(b"\0" * 64)
    config["features"]["vggish"]["final_relu"] = False
    config["weights"]["iresnet50"] = str(weights)
    rc, out = plan(config)
    assert rc != 0
    assert "the models were trained on other features than this run makes" in out
    assert "vggish: features.vggish.final_relu: the models were trained with true, this run has false" in out
    assert f"iresnet50: weights.iresnet50: the models were trained with random-init (seed 0), this run has " \
           f"'{weights}'" in out
    assert "predict_test" not in out and "Job stats" not in out
    assert not (tmp_path / "predicted").exists()


def test_every_file_a_stream_read_is_compared_the_face_descriptors_shape_predictor_too():
    """The face descriptor's chip comes from a second model file: two feature files made with
    different shape predictors hold different features, and their records say so."""
    from vafusion.learning.provenance import record_differences, stream_entry

    attrs = {"extractor": "face_descriptor", "params": "{\"jitter\": 0}", "weights": "dlib_face_recognition",
             "weights_sha256": "a" * 64, "weights_seed": -1, "shape_predictor": "shape_predictor_5",
             "shape_predictor_sha256": "b" * 64, "device": "cpu"}
    first = {"streams": {"face_descriptor": stream_entry(attrs)}}
    assert first["streams"]["face_descriptor"]["shape_predictor_sha256"] == "b" * 64
    assert "device" not in first["streams"]["face_descriptor"]  # per file, not what the features are
    other = {"streams": {"face_descriptor": stream_entry({**attrs, "shape_predictor_sha256": "c" * 64})}}
    assert record_differences(first, first, all_keys=True) == []
    (difference,) = record_differences(first, other, all_keys=True)
    assert difference[:2] == ("face_descriptor", "face_descriptor's shape predictor")
    assert "bbbbbbbb" in difference[2] and "cccccccc" in difference[3]
