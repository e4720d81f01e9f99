"""End to end: the real Snakemake workflow on the demo dataset (built by its own rule).

One complete run (the session's ``demo_run``) is shared by the checks of this module; a
second run on a damaged copy checks that bad input fails only its own jobs and leaves no
partial output. What reruns after a change is in test_reruns.py, SLURM in test_cluster.py.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import GRID, data_section, snakemake, write_config
from vafusion.dataset import discover
from vafusion.faces import FaceJpegs, decode_faces
from vafusion.learning.data import load_trial
from vafusion.learning.streams import split_run
from vafusion.learning.predict import load_model, predict_trial
from vafusion.video import ffmpeg_binary, iter_frames, probe_video

pytestmark = pytest.mark.e2e


def test_demo_dataset_has_the_promised_layout(demo_dataset):
    ds = discover(data_section(demo_dataset))
    parts = {p: [t for t in ds.trials.values() if t.partition == p] for p in ("train", "validation", "test")}
    assert len(parts["train"]) + len(parts["validation"]) >= 12 and len(parts["test"]) == 2
    suffixes = {p.suffix for p in ds.used_videos.values()}
    assert {".mp4", ".avi"} <= suffixes
    assert {round(probe_video(p).fps) for p in ds.used_videos.values()} == {25, 30}
    sides = {t.side for t in ds.trials.values()}
    assert {"left", "right"} <= sides
    assert sum(t.cropped_aligned is None for t in ds.trials.values()) == 1
    assert not all(probe_video(p).has_audio for p in ds.used_videos.values())
    annotations = [t.annotation.read_text() for t in ds.trials.values() if t.annotation]
    assert sum("-5" in text for text in annotations) >= 2
    assert "SYNTHETIC" in (demo_dataset / "README.md").read_text()
    # some cropped_aligned frames are missing
    summary = json.loads((demo_dataset / "summary.json").read_text())
    assert any(0 < t["cropped_aligned_frames"] < summary["videos"][t["video"]]["frames"]
               for t in summary["trials"].values())


def test_wavs_match_their_videos(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    for name, video in ds.used_videos.items():
        info = sf.info(results / "audio" / f"{name}.wav")
        meta = json.loads((results / "audio" / f"{name}.json").read_text())
        probe = probe_video(video)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.duration - probe.duration) <= 1 / probe.fps, name
        assert meta["audio_missing"] == (not probe.has_audio)


def test_face_files_cover_every_frame(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    found_total = frames_total = 0
    for name, trial in ds.trials.items():
        times = [f.time for f in iter_frames(ds.videos[trial.video])]
        with h5py.File(results / "faces" / f"{name}.h5") as h5:
            faces, found = FaceJpegs(h5)[:], h5["face_found"][:]  # one JPEG per frame
            assert decode_faces(faces).shape == (len(times), 112, 112, 3), name
            np.testing.assert_allclose(h5["timestamps"][:], times)
            assert h5.attrs["source"] == ("detected" if trial.cropped_aligned is None else "cropped_aligned")
        if trial.cropped_aligned is not None:
            present = [(trial.cropped_aligned / f"{i + 1:05d}.jpg").is_file() for i in range(len(times))]
            assert found.tolist() == present, name
            for i in np.flatnonzero(found):  # the dataset's 112x112 JPEGs, stored as they are
                assert faces[i].tobytes() == (trial.cropped_aligned / f"{i + 1:05d}.jpg").read_bytes(), (name, i)
        # a frame without a face repeats the last found one (or the next, in a leading gap)
        hits = np.flatnonzero(found)
        for i in np.flatnonzero(~found):
            before = hits[hits < i]
            source = before[-1] if len(before) else hits[0]
            assert np.array_equal(faces[i], faces[source]), (name, i)
        found_total += found.sum()
        frames_total += len(found)
    detected = [n for n, t in ds.trials.items() if t.cropped_aligned is None]
    for name in detected:
        with h5py.File(results / "faces" / f"{name}.h5") as h5:
            assert h5["face_found"][:].mean() >= 0.95
    assert found_total / frames_total >= 0.95


def test_labels_for_annotated_trials(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    for name, trial in ds.trials.items():
        path = results / "labels" / f"{name}.h5"
        if trial.annotation is None:
            assert not path.exists()
            continue
        with h5py.File(path) as h5:
            assert h5["valence"].shape == h5["valid_valence"].shape
            assert np.array_equal(h5["valid_arousal"][:], h5["arousal"][:] != -5)


def test_lint_is_clean(demo_run):
    results, _ = demo_run
    lint = snakemake(results.parent, "--configfile", str(results.parent / "config.yaml"), "--lint")
    assert "Congratulations" in lint.stdout + lint.stderr


def test_feature_files_sit_on_the_frame_clock(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    for name in ds.used_videos:
        meta = json.loads((results / "audio" / f"{name}.json").read_text())
        for feature, dim in (("mfcc", 39), ("vggish", 128)):
            with h5py.File(results / "features" / feature / f"{name}.h5") as h5:
                assert h5["features"].shape == (meta["n_frames"], dim), (feature, name)
                assert h5["features"].dtype == np.float32 and h5["features"].compression is None
                np.testing.assert_allclose(h5["timestamps"][:], meta["frame_times"])
                assert bool(h5.attrs["audio_missing"]) == meta["audio_missing"]
                assert np.isfinite(h5["features"][:]).all()
                if feature == "vggish":
                    assert h5.attrs["weights"] == "random-init"
    for name in ds.trials:
        with h5py.File(results / "faces" / f"{name}.h5") as faces, \
                h5py.File(results / "features" / "iresnet50" / f"{name}.h5") as feats:
            assert feats["features"].shape == (faces["face_index"].shape[0], 512)
            np.testing.assert_array_equal(feats["face_found"][:], faces["face_found"][:])
            np.testing.assert_allclose(feats["timestamps"][:], faces["timestamps"][:])
            assert feats.attrs["weights"] == "random-init" and feats.attrs["extractor"] == "iresnet50"
            assert json.loads(feats.attrs["params"])["batch_size"] == config["features"]["iresnet50"]["batch_size"]


def test_learning_outputs_and_reports(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    learning = config["learning"]
    runs = list(learning["models"]) + list(learning["experiments"])  # trained
    models, n_folds = runs + list(learning["ensembles"]), learning["n_folds"]  # every row of the report
    folds = json.loads((results / "folds.json").read_text())
    assert len(folds["folds"]) == n_folds
    for name, trial in ds.trials.items():
        with h5py.File(results / "aligned" / "default" / f"{name}.h5") as h5:
            if trial.annotation is not None:
                assert h5["iresnet50"].shape[0] == len(trial.annotation.read_text().splitlines()) - 1
            assert h5["vggish"].shape[1] == 128 and h5["mfcc"].shape[1] == 39
            # the default set's streams, and the speech presence the unvoiced pattern reads (one per frame)
            assert set(h5) == {"iresnet50", "vggish", "mfcc", "speech", "valence", "arousal", "valid_valence",
                               "valid_arousal", "face_found"}
            assert h5["speech"].shape == (h5["mfcc"].shape[0], 1) and 0 <= h5["speech"][:].min() <= 1
        with h5py.File(results / "aligned" / "pretrained" / f"{name}.h5") as h5:  # the pretrained set's
            assert h5["egemaps"].shape[1] == 88 and h5["landmarks"].shape[1] == 136 and "vggish" not in h5
    rows = (results / "reports" / "ccc.csv").read_text().splitlines()
    assert rows[0] == "model,seed,fold,ccc_valence,ccc_arousal,ccc_mean"
    assert len(rows) == 1 + len(models) * n_folds * len(learning["seeds"])
    summary = (results / "reports" / "summary.md").read_text()
    # the comparisons: each model's pooled CCC with its interval, every pair, the experiment
    # against the model it varies, the ensemble against its best member, the oracle-epoch gap, the refit,
    # the IACA gate's diagnostics
    assert "Epoch selection: epochs selected on an inner split" in summary
    assert "## Pooled CCC with 95% bootstrap intervals, best first" in summary
    assert summary.count("| valence |") >= len(models) * (len(models) - 1) // 2  # one row per pair and target
    experiment = next(iter(learning["experiments"]))
    assert f"| {experiment} | train.lr=0.002 |" in summary and "| tcn_transformer | " in summary
    assert "| late_fusion | tcn_transformer, rjca_iaca | ccc |" in summary
    assert "## Oracle-epoch gap" in summary and "## Refit after selection" in summary
    assert "## Gate diagnostics (IACA stage 2: audio, visual, joint)" in summary and "| rjca_iaca | 0 |" in summary
    patterns = config["learning"]["train"]["missing_audio"]["patterns"]
    assert all(f"| {m} |" in summary for m in models)
    for pattern in patterns:  # one table per pattern and scope: all validation trials, the longest one
        assert summary.count(f"## Missing audio ({pattern} frames dropped, given zeros at the audio networks' input)") == 2
    page = (results / "reports" / "report.html").read_text()
    iaca = [m for m in runs if m.endswith("_iaca")]  # + their two gate figures
    # the forest plot and the difference matrix, CCC per fold, the missing-audio curves, the models' figures
    assert page.count("data:image/png;base64,") == 3 + len(patterns) + 4 * len(runs) + 2 * len(iaca)
    for model in runs:  # CCC per validation trial: each trial once, in the fold that validates it
        with open(results / "reports" / model / "ccc_per_trial.csv", newline="") as fh:
            per_trial = list(csv.DictReader(fh))
        assert sorted(r["trial"] for r in per_trial) == sorted(t for f in folds["folds"] for t in f["validation"])
    for model in models:
        for name, trial in ds.trials.items():
            if trial.partition != "test":
                continue
            lines = (results / "predictions" / model / "test" / f"{name}.txt").read_text().splitlines()
            assert lines[0] == "valence,arousal"
            values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
            assert len(values) == len(list(iter_frames(ds.videos[trial.video])))
            assert values.std(axis=0).min() > 0  # a per-frame prediction, not a constant
        if model not in runs:
            continue  # an ensemble: no missing-audio test of its own
        metrics = json.loads((results / "models" / model / "seed0" / "fold0" / "metrics.json").read_text())
        assert metrics["selection"] == "inner" and set(metrics["inner_trials"]).isdisjoint(
            folds["folds"][0]["validation"])
        # refitted (config.yaml's default) on every training trial for the inner split's epoch count
        assert metrics["refit"]["epochs"] == metrics["best_epoch"]
        assert metrics["n_train_trials"] == len(folds["folds"][0]["train"])
        shares = {f"{s:g}" for s in config["learning"]["train"]["missing_audio"]["shares"]}
        for pattern in patterns:
            for scope in ("all_trials", "longest_trial"):
                assert set(metrics["missing_audio"][pattern][scope]) == shares
        assert metrics["missing_audio"]["longest_trial"] in folds["folds"][0]["validation"]
    fills = {s: h5py.File(results / "features" / "fills" / f"{s}.h5") for s in ("mfcc", "vggish", "egemaps")}
    for name, dim in (("mfcc", 39), ("vggish", 128), ("egemaps", 88)):
        assert fills[name]["zeros"].shape == fills[name]["silence"].shape == (dim,)
    assert not fills["mfcc"]["zeros"][:].any() and fills["mfcc"]["silence"][:].any()
    assert not np.array_equal(fills["vggish"]["zeros"][:], fills["vggish"]["silence"][:])
    assert not fills["egemaps"]["zeros"][:].any()  # eGeMAPS is the model's input: zeros are zeros


def test_bad_input_fails_only_its_jobs(demo_dataset, tmp_path):
    dataset = tmp_path / "bad data"
    shutil.copytree(demo_dataset, dataset)
    broken_video = dataset / "videos" / "batch1" / "grid_bbaf2n.mp4"
    broken_video.write_bytes(broken_video.read_bytes()[:20000])
    broken_ann = dataset / "annotations" / "train" / "grid_lbbc2a.txt"
    lines = broken_ann.read_text().splitlines()
    lines[9] = "0.1,high"
    broken_ann.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path, dataset)
    # every media job, and the features of one good trial and of the damaged ones
    targets = ["media"] + [f"results/features/{kind}/{name}.h5" for kind in ("mfcc", "iresnet50")
                           for name in ("grid_swwp2s", "grid_bbaf2n")]
    proc = snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "--keep-going", *targets, check=False)
    assert proc.returncode != 0
    results = tmp_path / "results"
    logs = results / "logs"
    assert "grid_bbaf2n.mp4" in (logs / "extract_audio" / "grid_bbaf2n.log").read_text()
    assert "grid_bbaf2n.mp4" in (logs / "align_faces" / "grid_bbaf2n.log").read_text()
    assert f"{broken_ann}:10: arousal 'high' is not a number" in (logs / "read_annotation" / "grid_lbbc2a.log").read_text()
    assert not (results / "audio" / "grid_bbaf2n.wav").exists()
    assert not (results / "faces" / "grid_bbaf2n.h5").exists()
    assert not (results / "labels" / "grid_lbbc2a.h5").exists()
    assert not list(results.rglob("*.part")), "partial files left behind"
    # every other job finished
    assert len(list((results / "audio").glob("*.wav"))) == 14
    assert len(list((results / "faces").glob("*.h5"))) == 15
    assert len(list((results / "labels").glob("*.h5"))) == 13
    # features follow the good trial only; nothing downstream of the damaged video ran
    assert [p.name for p in (results / "features" / "mfcc").iterdir()] == ["grid_swwp2s.h5"]
    assert [p.name for p in (results / "features" / "iresnet50").iterdir()] == ["grid_swwp2s.h5"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c, d: c.update(extra_key=1), "Additional properties are not allowed ('extra_key'"),
        (lambda c, d: c["media"].pop("sample_rate"), "'sample_rate' is a required property"),
        (lambda c, d: c["data"].update(videos=str(d / "no such dir")), "no such dir' does not exist"),
        (lambda c, d: (Path(c["data"]["annotations"]["train"]) / "ghost.txt").write_text("valence,arousal\n0,0\n"),
         "ghost.txt: no video for trial 'ghost'"),
        (lambda c, d: c["learning"]["tcn_transformer"].update(n_heads=3),
         "learning.tcn_transformer.n_heads: 3 does not divide d_model"),
    ],
    ids=["unknown-key", "missing-key", "missing-path", "annotation-without-video", "heads-not-dividing-width"],
)
def test_config_and_layout_errors_stop_before_any_job(demo_dataset, tmp_path, change, expected):
    dataset = tmp_path / "data"
    shutil.copytree(demo_dataset / "annotations", dataset / "annotations")
    (dataset / "videos").symlink_to(demo_dataset / "videos")
    (dataset / "test_trials.txt").write_text("")
    (dataset / "cropped_aligned").mkdir()
    config = yaml.safe_load(write_config(tmp_path, dataset).read_text())
    change(config, dataset)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # a real run (not -n): the error must come before any job starts
    proc = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr and not (tmp_path / "results").exists()


def test_predict_new_videos_with_a_trained_run(demo_run, tmp_path):
    """`snakemake predict` on a folder of videos without annotations, with the demo run's
    trained models: media and features run for the new video, then one row per decoded
    frame, the mean of the fold models (each with its own normaliser)."""
    results, config = demo_run
    videos = tmp_path / "new videos"
    videos.mkdir()
    new = videos / "mirrored_bbaf2n.mp4"  # a video the run never saw: a GRID clip, mirrored
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(GRID / "bbaf2n.mpg"), "-vf", "hflip",
                    "-c:v", "libx264", "-c:a", "aac", str(new)], check=True)
    config = {**config, "data": {"videos": str(videos), "annotations": None, "cropped_aligned": None,
                                 "test_trials": None},
              "output": str(tmp_path / "predicted"), "learning": {**config["learning"], "trained_run": str(results)}}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, "--configfile", str(tmp_path / "predict.yaml"), "--cores", "2", "predict")
    out = tmp_path / "predicted"
    assert not (out / "models").exists()  # nothing trained
    n_frames = len(list(iter_frames(new)))
    for model in config["learning"]["models"]:
        lines = (out / "predictions" / model / "test" / "mirrored_bbaf2n.txt").read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) - 1 == n_frames
        written = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
        folds = sorted((results / "models" / model).glob("seed*/fold*/model.pt"))
        each = []
        for path in folds:
            net, normalizer, cfg, smoothing = load_model(path, torch.device("cpu"))
            # the streams the model fuses (the aligned file also holds the speech presence)
            trial = load_trial(out / "aligned" / split_run(model)[1] / "mirrored_bbaf2n.h5",
                               net.fused_streams["visual"] + net.fused_streams["audio"])
            each.append(predict_trial(net, normalizer.apply(trial), cfg, torch.device("cpu"), smoothing))
        np.testing.assert_allclose(written, np.mean(each, axis=0), atol=2e-6)
