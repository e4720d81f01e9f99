"""The speech presence streams on real GRID clips: ``speech`` (silero-vad, vafusion.features.
speech) equals silero-vad's own ONNX wrapper chunk for chunk, is mapped to video frames as
a plain loop here maps it, and is high in GRID's speech and low in its silences;
``mouth_open`` (vafusion.features.mouth) equals the inner-lip gap recomputed here from
dlib's 68 points, opens while the speaker talks, and carries faces over frames without one."""

import functools
import hashlib
import json
import logging
import shutil
import warnings

import cv2
import dlib
import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import GRID, write_faces
from vafusion.audio import extract_audio
from vafusion.faces import FaceJpegs, align_trial_faces, dlib_model_path
from vafusion.features.mouth import extract as extract_mouth
from vafusion.features.registry import ExtractJob, shipped_file
from vafusion.features.speech import SileroVad, SpeechParams, compute_speech, extract as extract_speech, model_path
from vafusion.weights import WeightsError

SR = 16000
CHUNK = 512  # silero-vad's chunk at 16 kHz
SPOKEN = "id2_vcd_swwp2s"  # "set white with p two soon"
# GRID's word timings of that clip (swwp2s.align, in 1/1000 video frames at 25 fps): "sil"
# until 12250, the six words from 12250 to 55250, "sil" to the end
SENTENCE_S = (12250 / 25000, 55250 / 25000)
TALKER = "sbwe5n"  # a speaker who shuts the mouth when not talking: the mouth follows the speech
BOX = dlib.rectangle(16, 26, 102, 112)  # the dlib streams' box on the 112x112 aligned face


@pytest.fixture(scope="module")
def silero_reference():
    """silero-vad's own ONNX wrapper: its audio_forward runs the model chunk by chunk.
    Importing silero_vad sets torch's threads to 1: restored for the other tests."""
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # its importlib.resources.path is deprecated: not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        model = load_silero_vad(onnx=True)
    torch.set_num_threads(threads)

    def probabilities(samples: np.ndarray) -> np.ndarray:
        return model.audio_forward(torch.from_numpy(np.asarray(samples, np.float32)), SR)[0].numpy()

    return probabilities


@pytest.fixture(scope="module")
def grid_audio(tmp_path_factory):
    """{clip: (wav path, meta, samples)}, made by the pipeline's own media code."""
    folder = tmp_path_factory.mktemp("speech_audio")
    clips = {}
    for name in (SPOKEN, TALKER):
        meta = extract_audio(GRID / f"{name}.mpg", folder / f"{name}.wav", folder / f"{name}.json")
        clips[name] = (str(folder / f"{name}.wav"), meta, sf.read(folder / f"{name}.wav", dtype="float32")[0])
    return clips


@pytest.fixture(scope="module")
def talker_faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech_faces") / f"{TALKER}.h5"
    align_trial_faces(GRID / f"{TALKER}.mpg", path, trial=TALKER)
    return path


def run_speech(wav, meta, out, weights=None):
    extract_speech(ExtractJob(stream="speech", output=str(out), settings={"sample_rate": SR}, wav=str(wav),
                              meta=meta, weights={"speech": weights}))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["timestamps"][:], dict(h5.attrs)


def run_mouth(faces, out, threads=1, batch_size=256):
    extract_mouth(ExtractJob(stream="mouth_open", output=str(out), settings={"batch_size": batch_size},
                             faces=str(faces), threads=threads))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["face_found"][:], dict(h5.attrs)


# --- speech ----------------------------------------------------------------------------------

def test_chunk_probabilities_equal_silero_vads_own_wrapper(grid_audio, silero_reference):
    """Same model file, same protocol (64-sample context, carried state, zero-padded last
    chunk): the same numbers (measured: identical; tolerance 1e-6). After reset the stream
    starts afresh; fed in two pieces it continues where it stopped."""
    samples = grid_audio[SPOKEN][2]
    reference = silero_reference(samples)
    vad = SileroVad(model_path(None))
    ours = vad.probabilities(samples)
    assert ours.shape == reference.shape == (-(-len(samples) // CHUNK),)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    vad.probabilities(np.random.default_rng(0).uniform(-0.5, 0.5, 2 * CHUNK))  # leaves state and context
    vad.reset()
    split = 37 * CHUNK
    pieces = np.concatenate([vad.probabilities(samples[:split]), vad.probabilities(samples[split:])])
    np.testing.assert_allclose(pieces, reference, rtol=0, atol=1e-6)
    # the state matters: the same chunks from a fresh state each give other probabilities
    fresh = []
    for k in range(20, 30):
        vad.reset()
        fresh.append(vad.probabilities(samples[k * CHUNK:(k + 1) * CHUNK])[0])
    assert np.abs(np.array(fresh) - reference[20:30]).max() > 0.05


def overlap_mean(probs, first_chunk, a, b):
    """The mean of chunk probabilities over samples [a, b): chunk ``first_chunk + i`` holds
    samples [512 (first_chunk + i), 512 (first_chunk + i + 1))."""
    total = weight = 0.0
    for i, p in enumerate(probs):
        lo, hi = (first_chunk + i) * CHUNK, (first_chunk + i + 1) * CHUNK
        overlap = max(0.0, min(b, hi) - max(a, lo))
        total, weight = total + overlap * p, weight + overlap
    return total / weight


@pytest.mark.parametrize("audio_start_s", [0.0, 0.3])
def test_frames_are_the_overlap_weighted_mean_of_the_chunks(grid_audio, silero_reference, tmp_path, audio_start_s):
    """Each 25 fps frame spans +-20 ms round its time; its value is the overlap-weighted
    mean of silero's probabilities over that span, silero run on the WAV extended with
    silence over the video's frames (frame 0's span starts 20 ms before the audio; with
    the audio starting 0.3 s into the video, 0.32 s before it)."""
    wav, meta, samples = grid_audio[SPOKEN]
    meta = {**meta, "audio_start_s": audio_start_s}
    features, times, attrs = run_speech(wav, meta, tmp_path / "speech.h5")
    frame_times = np.asarray(meta["frame_times"])
    assert features.shape == (75, 1) and np.array_equal(times, frame_times)
    spans = [((t - audio_start_s - 0.02) * SR, (t - audio_start_s + 0.02) * SR) for t in frame_times]
    first = int(np.floor(min(a for a, _ in spans) / CHUNK))
    last = int(np.ceil(max(max(b for _, b in spans), len(samples)) / CHUNK))  # exclusive
    audio = np.zeros((last - first) * CHUNK, np.float32)
    audio[-first * CHUNK:-first * CHUNK + len(samples)] = samples
    probs = silero_reference(audio)
    assert attrs["first_chunk"] == first and attrs["chunks"] == last - first
    expected = [overlap_mean(probs, first, a, b) for a, b in spans]
    np.testing.assert_allclose(features[:, 0], expected, rtol=0, atol=1e-6)
    # the WAV read 7 chunks at a time (a long video's blocks): the stream runs on unchanged
    blocks = compute_speech(wav, meta, SpeechParams(SR), SileroVad(model_path(None)), block_chunks=7)[0]
    np.testing.assert_array_equal(blocks, features)


def test_speech_is_high_in_grids_words_and_low_in_its_silences(grid_audio, tmp_path):
    """GRID's own word timings: frames 100 ms inside the sentence (stops such as "p"
    included) are speech (measured >= 0.88), frames of the leading and trailing silence at
    least 100 ms from it are not (measured <= 0.05); digital silence is no speech."""
    wav, meta, _ = grid_audio[SPOKEN]
    features = run_speech(wav, meta, tmp_path / "speech.h5")[0][:, 0]
    begin, end = SENTENCE_S
    times = np.asarray(meta["frame_times"])
    inside = (times > begin + 0.1) & (times < end - 0.1)
    outside = (times < begin - 0.1) | (times > end + 0.1)
    assert inside.sum() > 35 and outside.sum() > 15
    assert features[inside].min() > 0.6, features[inside].min()
    assert features[outside].max() < 0.15, features[outside].max()
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(3 * SR, np.int16), SR, subtype="PCM_16")
    quiet = run_speech(silence, {"frame_times": (np.arange(75) / 25).tolist(), "audio_start_s": 0.0,
                                 "audio_missing": True}, tmp_path / "silence.h5")[0]
    assert quiet.shape == (75, 1) and quiet.max() < 0.1


def test_speech_file_records_the_model_and_takes_another_copy(grid_audio, tmp_path):
    wav, meta, _ = grid_audio[SPOKEN]
    features, _, attrs = run_speech(wav, meta, tmp_path / "speech.h5")
    shipped = shipped_file("silero_vad", "data/silero_vad.onnx")
    assert attrs["weights_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert "silero-vad 6.2.3" in attrs["weights"] and "MIT" in attrs["weights"] and attrs["weights_seed"] == -1
    assert attrs["extractor"] == "speech" and attrs["columns"] == "speech_probability" and not attrs["audio_missing"]
    params = json.loads(attrs["params"])
    assert params["chunk_samples"] == 512 and params["context_samples"] == 64 and params["sample_rate"] == SR
    assert ((features >= 0) & (features <= 1)).all()
    # weights.speech: a copy elsewhere gives the same rows and is named as the weights
    copy = tmp_path / "vad" / "my_vad.onnx"
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    again, _, attrs = run_speech(wav, meta, tmp_path / "copy.h5", weights=str(copy))
    assert np.array_equal(features, again) and str(copy) in attrs["weights"]
    with pytest.raises(WeightsError, match="nowhere.onnx, which is not a file"):
        run_speech(wav, meta, tmp_path / "x.h5", weights=str(tmp_path / "nowhere.onnx"))
    not_onnx = tmp_path / "vad" / "broken.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="broken.onnx is not a readable ONNX model"):
        run_speech(wav, meta, tmp_path / "x.h5", weights=str(not_onnx))
    with pytest.raises(ValueError, match="16000 or 8000 Hz"):
        extract_speech(ExtractJob(stream="speech", output=str(tmp_path / "x.h5"), settings={"sample_rate": 22050},
                                  wav=wav, meta=meta))


# --- mouth_open ------------------------------------------------------------------------------

def rgb_faces(faces):
    with h5py.File(faces) as h5:
        return [cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for data in FaceJpegs(h5)[:]]


@functools.cache
def shape_predictor():
    return dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))


def dlib_points(rgb):
    shape = shape_predictor()(rgb, BOX)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], float)


def lip_gap(p):
    """(68, 2) pixels -> mean of |61-67|, |62-66|, |63-65| over the distance of the eye
    centres (means of 36-41 and 42-47)."""
    gap = np.mean([np.hypot(*(p[u] - p[w])) for u, w in ((61, 67), (62, 66), (63, 65))])
    return gap / np.hypot(*(p[42:48].mean(axis=0) - p[36:42].mean(axis=0)))


def test_mouth_open_is_the_inner_lip_gap_over_the_eye_distance(talker_faces, tmp_path):
    features, found, attrs = run_mouth(talker_faces, tmp_path / "mouth.h5")
    assert features.shape == (75, 1) and found.all()
    faces = rgb_faces(talker_faces)
    points = [dlib_points(rgb) for rgb in faces]
    np.testing.assert_allclose(features[:, 0], [lip_gap(p) for p in points], rtol=0, atol=1e-5)
    # the pairs face each other across the mouth: upper inner lip (61-63) over the lower
    # (67-65), each pair about as far apart in x as a tenth of the mouth's inner width
    p = np.array(points)
    width = np.abs(p[:, 64, 0] - p[:, 60, 0])
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        assert (p[:, upper, 1] <= p[:, lower, 1]).all()
        assert (np.abs(p[:, upper, 0] - p[:, lower, 0]) < 0.15 * width).all()
    model = dlib_model_path("shape_predictor_68_face_landmarks.dat")
    assert attrs["weights_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert attrs["extractor"] == "mouth_open" and attrs["columns"] == "inner_lip_gap_per_interocular"


def test_mouth_opens_while_the_speaker_talks(talker_faces, grid_audio, tmp_path):
    """The lips are shut (~0) in the silences and part while speaking: the mouth stream
    follows the speech stream of the same clip (measured: correlation 0.70, mean opening
    0.10 in speech, 0.03 in silence)."""
    mouth = run_mouth(talker_faces, tmp_path / "mouth.h5")[0][:, 0]
    wav, meta, _ = grid_audio[TALKER]
    speech = run_speech(wav, meta, tmp_path / "speech.h5")[0][:, 0]
    assert mouth.min() < 0.02 and mouth.max() > 0.15, (mouth.min(), mouth.max())
    assert np.corrcoef(mouth, speech)[0, 1] > 0.5
    assert mouth[speech > 0.5].mean() > 2.5 * mouth[speech < 0.1].mean()


@pytest.fixture(scope="module")
def gappy_faces(talker_faces, tmp_path_factory):
    """Ten frames: two without a face, the clip's faces 55 (shut), 36 (open) and 20, two
    without, face 45, one without, face 10."""
    pattern = [None, None, 55, 36, 20, None, None, 45, None, 10]
    with h5py.File(talker_faces) as h5:
        jpegs = FaceJpegs(h5)[:]
    path = write_faces(tmp_path_factory.mktemp("speech_faces") / "gappy.h5", [None if k is None else jpegs[k] for k in pattern])
    return path, pattern


def test_frames_without_a_face_carry_the_last_faces_value(gappy_faces, tmp_path, caplog):
    path, pattern = gappy_faces
    with caplog.at_level(logging.INFO, logger="vafusion.features.dlib_face"):
        features, found, _ = run_mouth(path, tmp_path / "mouth.h5", batch_size=3)
    assert found.tolist() == [k is not None for k in pattern]
    assert "10 frames, 5 faces computed, 5 frames without a face" in caplog.text
    own = [lip_gap(dlib_points(rgb)) for rgb in rgb_faces(path)]  # frame i's stored face (gaps repeat one)
    source = [2, 2, 2, 3, 4, 4, 4, 7, 7, 9]  # leading gap: the first face; then the last one
    np.testing.assert_allclose(features[:, 0], [own[j] for j in source], rtol=0, atol=1e-5)
    assert len({float(features[j, 0]) for j in (2, 3, 4, 7, 9)}) == 5
    workers = run_mouth(path, tmp_path / "workers.h5", threads=2, batch_size=2)[0]
    assert np.array_equal(features, workers)
    empty = write_faces(tmp_path / "none.h5", [None] * 4)
    features, found, _ = run_mouth(empty, tmp_path / "none_out.h5")
    assert features.shape == (4, 1) and not features.any() and not found.any()
