"""eGeMAPSv02 streams against openSMILE itself: the one-pass functionals against
openSMILE called on each 1-s window cut out of the WAV, the LLDs against openSMILE's LLDs
of the whole file, on real GRID speech; chunking and threads; silence; provenance."""

from __future__ import annotations

import json
import subprocess
import os
import sys

import h5py
import numpy as np
import opensmile
import pytest
import soundfile as sf

from conftest import GRID, REPO
from vafusion.audio import extract_audio
from vafusion.features import egemaps
from vafusion.features.registry import ExtractJob, Stream
from vafusion.features.silence import fill_features

SR = 16000
# The settings proposed for config.yaml (features.egemaps / features.egemaps_lld).
SETTINGS = {"egemaps": {"window_s": 1.0, "chunk_s": 60.0, "context_s": 1.0},
            "egemaps_lld": {"chunk_s": 60.0, "context_s": 1.0}}
CLIPS = ("bbaf2n", "lwbsza")  # 3 s each, 25 fps; their audio is 2.978 s
SAMPLE = np.arange(0, 75, 5)  # 15 frames a clip; frames 50..74 run past the end of the audio


def smile(level: str) -> opensmile.Smile:
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=level)


def per_window(signal: np.ndarray, starts: np.ndarray, window: int = SR) -> np.ndarray:
    """openSMILE called once per window of ``window`` samples from each of ``starts``
    (zero-padded past the end of the signal), as RJCMA's preprocessing does."""
    functionals = smile("func")
    rows = []
    for start in starts:
        cut = np.zeros(window, np.float32)
        piece = signal[max(start, 0):start + window]
        cut[max(-start, 0):max(-start, 0) + len(piece)] = piece
        rows.append(functionals.process_signal(cut, SR).to_numpy()[0])
    return np.array(rows)


def extract(stream: str, wav: str, meta: dict, out, threads: int = 1, **settings) -> tuple[np.ndarray, dict]:
    job = ExtractJob(stream=stream, output=str(out), settings={**SETTINGS[stream], **settings, "sample_rate": SR},
                     wav=wav, meta=meta, threads=threads)
    egemaps.extract(job)
    with h5py.File(out) as h5:
        return h5["features"][:], dict(h5.attrs)


def deviation(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|ours - ref| in units of each functional's std across the reference windows."""
    return np.abs(ours - ref) / (ref.std(axis=0) + 1e-12)


@pytest.fixture(scope="module")
def grid_audio(tmp_path_factory):
    """{clip: (wav path, meta, samples)} for two real GRID clips, by the pipeline's own media code."""
    folder = tmp_path_factory.mktemp("egemaps_audio")
    clips = {}
    for name in CLIPS:
        meta = extract_audio(GRID / f"{name}.mpg", folder / f"{name}.wav", folder / f"{name}.json")
        clips[name] = (str(folder / f"{name}.wav"), meta, sf.read(folder / f"{name}.wav", dtype="float32")[0])
    return clips


@pytest.fixture(scope="module")
def functionals_vs_per_window(grid_audio, tmp_path_factory):
    """(ours, per-window openSMILE, attrs) on the sampled frames of both clips."""
    folder = tmp_path_factory.mktemp("egemaps_out")
    ours, ref = [], []
    for name, (wav, meta, signal) in grid_audio.items():
        rows, attrs = extract("egemaps", wav, meta, folder / f"{name}.h5")
        starts = np.round((np.asarray(meta["frame_times"])[SAMPLE] - meta["audio_start_s"]) * SR).astype(int)
        ours.append(rows[SAMPLE])
        ref.append(per_window(signal, starts))
    return np.concatenate(ours), np.concatenate(ref), attrs


def test_names_and_widths_are_opensmiles():
    assert egemaps.FUNCTIONAL_NAMES == tuple(smile("func").feature_names)
    assert egemaps.LLD_NAMES == tuple(smile("lld").feature_names)
    assert (len(egemaps.FUNCTIONAL_NAMES), len(egemaps.LLD_NAMES)) == (egemaps.FUNCTIONALS_DIM, egemaps.LLD_DIM) == (88, 25)
    covered = sorted(i for s in egemaps.GROUPS.values() for i in range(88)[s])
    assert covered == list(range(88))


def test_window_lld_frames_follow_openSMILEs_per_window_counts():
    # 1 s: 99 complete 20 ms frames; 94 of the 60 ms path (see the module docstring).
    assert egemaps.window_frames(1.0) == (99, 94)
    assert egemaps.window_frames(2.0) == (199, 194)
    with pytest.raises(ValueError):
        egemaps.window_frames(0.05)


def test_functionals_equal_opensmile_per_window_within_tolerance(functionals_vs_per_window):
    ours, ref, attrs = functionals_vs_per_window
    assert ours.shape == ref.shape == (len(CLIPS) * len(SAMPLE), 88)
    assert attrs["max_window_offset_ms"] == 0.0  # 25 fps: every window on the 10 ms grid
    d = deviation(ours, ref)
    for group, (median, p95, share) in egemaps.TOLERANCE.items():
        g = d[:, egemaps.GROUPS[group]]
        assert np.median(g) <= median, (group, np.median(g))
        assert np.quantile(g, 0.95) <= p95, (group, np.quantile(g, 0.95))
        assert (g > 1.0).mean() <= share, (group, (g > 1.0).mean())


def test_leq_and_the_frame_counting_functionals_are_exact(functionals_vs_per_window):
    # Leq is the mean energy of the window's 20 ms frames, with no smoothing and no state:
    # exact only if the window starts on the right LLD frame, spans the right frames and
    # its column is where openSMILE puts it. A window moved by one 10 ms frame, centred on
    # the frame instead of starting at it, one frame longer or shorter, or a shuffled column
    # order all break this (tried by hand).
    ours, ref, _ = functionals_vs_per_window
    leq = egemaps.FUNCTIONAL_NAMES.index("equivalentSoundLevel_dBp")
    np.testing.assert_allclose(ours[:, leq], ref[:, leq], rtol=1e-6, atol=1e-4)
    # Most F0 functionals are exact too (the windows' edge frames are often unvoiced), and so
    # are the voiced-segment rate and the mean unvoiced-segment length, which count the
    # window's 60 ms-path frames: one frame more or less breaks them (tried by hand).
    exact = np.abs(ours - ref) <= 1e-4 * (1 + np.abs(ref))
    assert exact[:, :10].mean() > 0.5
    for name in ("VoicedSegmentsPerSec", "MeanUnvoicedSegmentLength"):
        assert exact[:, egemaps.FUNCTIONAL_NAMES.index(name)].mean() > 0.5, name


def test_llds_equal_opensmiles_whole_file_llds_at_the_frame_centres(grid_audio, tmp_path):
    lld = smile("lld")
    for name, (wav, meta, signal) in grid_audio.items():
        ours, attrs = extract("egemaps_lld", wav, meta, tmp_path / f"{name}.h5")
        assert ours.shape == (len(meta["frame_times"]), 25) and attrs["max_frame_offset_ms"] == 0.0
        whole = lld.process_signal(signal, SR).to_numpy()
        # openSMILE's row k: frames starting at k x 10 ms, centred on average 20 ms later
        rows = np.round((np.asarray(meta["frame_times"]) - meta["audio_start_s"] - 0.02) * 100).astype(int)
        inside = (rows >= 5) & (rows < len(whole) - 10)  # the file's edges: context differs
        assert inside.sum() >= 70
        np.testing.assert_array_equal(ours[inside], whole[rows[inside]])
        assert np.isfinite(ours).all()
    # A video starting 0.5 s into its audio: its first frames have the audio before them as
    # context, as in openSMILE's run on the whole file, so they are exact too.
    late = {**meta, "audio_start_s": -0.5, "frame_times": (np.arange(50) / 25).tolist()}
    ours, _ = extract("egemaps_lld", wav, late, tmp_path / "late.h5")
    np.testing.assert_array_equal(ours, whole[48 + 4 * np.arange(50)])


def test_off_grid_frame_rate_snaps_windows_to_the_nearest_10ms(grid_audio, tmp_path):
    """29.97 fps: each window starts on the nearest 10 ms LLD frame (<= 5 ms away) and then
    equals openSMILE's per-window output for the snapped start like an on-grid window."""
    wav, meta, signal = grid_audio[CLIPS[0]]
    times = np.arange(89) / (30000 / 1001)
    meta = {**meta, "frame_times": times.tolist(), "video_fps": 30000 / 1001}
    ours, attrs = extract("egemaps", wav, meta, tmp_path / "ntsc.h5")
    starts = np.round(times * SR).astype(int)
    snapped = np.floor(starts / 160 + 0.5).astype(int) * 160
    assert 4.0 < attrs["max_window_offset_ms"] <= 5.0
    sample = np.arange(0, 89, 6)
    ref = per_window(signal, snapped[sample])
    leq = egemaps.FUNCTIONAL_NAMES.index("equivalentSoundLevel_dBp")
    np.testing.assert_allclose(ours[sample, leq], ref[:, leq], rtol=1e-6, atol=1e-4)
    d = deviation(ours[sample], ref)
    assert np.median(d) <= 0.02 and np.quantile(d, 0.95) <= 0.3


def test_chunks_and_threads_do_not_change_the_features(grid_audio, tmp_path):
    wav, meta, _ = grid_audio[CLIPS[1]]
    for stream in ("egemaps", "egemaps_lld"):
        whole, _ = extract(stream, wav, meta, tmp_path / f"{stream}_whole.h5")
        chunked, _ = extract(stream, wav, meta, tmp_path / f"{stream}_chunks.h5", threads=2, chunk_s=0.7)
        np.testing.assert_array_equal(chunked, whole)


def test_silence_gives_finite_rows_and_the_files_carry_provenance(tmp_path):
    for stream, dim in (("egemaps", 88), ("egemaps_lld", 25)):
        entry = Stream(stream, "audio", "wav", "vafusion.features.egemaps", dim, lambda config: {}, "test entry")
        job = ExtractJob(stream=stream, output="", settings={**SETTINGS[stream], "sample_rate": SR})
        fills = fill_features(tmp_path / f"{stream}_fills.h5", entry, job)  # the pipeline's 3 s of silence
        assert fills["silence"].shape == (dim,) and np.isfinite(fills["silence"]).all()
        assert not fills["zeros"].any()
        with h5py.File(tmp_path / f"{stream}_fills.h5") as h5:
            made = json.loads(h5.attrs["provenance"])
        assert made["extractor"] == stream and made["audio_missing"] in (True, "True")
        assert "eGeMAPSv02" in made["weights"] and len(made["weights_sha256"]) == 64
        assert made["nonfinite_replaced"] == 0
        params = json.loads(made["params"])
        assert params["context_s"] == 1.0 and params["sample_rate"] == SR
    leq = egemaps.FUNCTIONAL_NAMES.index("equivalentSoundLevel_dBp")
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(3 * SR, np.int16), SR, subtype="PCM_16")
    meta = {"frame_times": (np.arange(75) / 25).tolist(), "audio_start_s": 0.0, "audio_missing": True}
    rows, _ = extract("egemaps", str(wav), meta, tmp_path / "silence.h5")
    assert np.isfinite(rows).all() and np.allclose(rows[:, leq], -120.0)


def test_unknown_stream_is_refused(tmp_path):
    with pytest.raises(ValueError, match="egemaps_lld"):
        egemaps.extract(ExtractJob(stream="gemaps", output=str(tmp_path / "x.h5"), settings={}))


def test_nothing_imports_pkg_resources():
    # setuptools >= 82 has no pkg_resources: the opensmile import chain must not need it.
    code = ("import sys, vafusion.features.egemaps as e, opensmile; e.weights_info(); "
            "assert 'pkg_resources' not in sys.modules, 'pkg_resources imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
