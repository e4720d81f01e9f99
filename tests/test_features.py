"""Feature extractors: MFCC against an independent numpy implementation, VGGish's front end
against hand-computed values, the frame clock, determinism, silence, and no-face trials."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import soundfile as sf

from vafusion.features.iresnet import IresnetParams, extract_iresnet50
from vafusion.features.mfcc import MfccParams, compute_mfcc, extract_mfcc
from vafusion.features.vggish import VGGishFrontEnd, VggishParams, example_starts, extract_vggish, EXAMPLE_SPAN
import torch

SR = 16000


# --- MFCC -------------------------------------------------------------------------------

def reference_mfcc(signal, times, p: MfccParams):
    """MFCC+deltas written from the textbook formulas, with plain numpy loops."""
    win = p.window
    out = []
    padded = np.concatenate([np.zeros(win * 2), signal, np.zeros(win * 2)])
    hamming = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / (win - 1)) for n in range(win)])
    mel = lambda f: 2595.0 * math.log10(1 + f / 700.0)  # HTK, same as 1127 ln(1 + f/700)
    inv_mel = lambda m: 700.0 * (10 ** (m / 2595.0) - 1)
    n_bins = p.n_fft // 2 + 1
    freqs = np.linspace(0, SR / 2, n_bins)
    pts = [inv_mel(mel(0) + (mel(SR / 2) - mel(0)) * i / (p.n_mels + 1)) for i in range(p.n_mels + 2)]
    fbank = np.zeros((n_bins, p.n_mels))
    for m in range(p.n_mels):
        for k, f in enumerate(freqs):
            rise = (f - pts[m]) / (pts[m + 1] - pts[m])
            fall = (pts[m + 2] - f) / (pts[m + 2] - pts[m + 1])
            fbank[k, m] = max(0.0, min(rise, fall))
    for t in times:
        start = int(round(t * SR)) - win // 2 + win * 2
        x = padded[start - 1:start + win]
        x = x[1:] - p.preemphasis * x[:-1]
        power = np.abs(np.fft.rfft(x * hamming, p.n_fft)) ** 2 / p.n_fft
        logmel = np.log(np.maximum(power @ fbank, 1e-10))
        ceps = []
        for k in range(p.n_ceps):
            scale = math.sqrt(1 / p.n_mels) if k == 0 else math.sqrt(2 / p.n_mels)
            c = scale * sum(logmel[n] * math.cos(math.pi * k * (2 * n + 1) / (2 * p.n_mels)) for n in range(p.n_mels))
            ceps.append(c * (1 + p.lifter / 2 * math.sin(math.pi * k / p.lifter)))
        out.append(ceps)
    static = np.array(out)

    def delta(c):
        n = p.delta_window
        padded_c = np.concatenate([np.repeat(c[:1], n, 0), c, np.repeat(c[-1:], n, 0)])
        denom = 2 * sum(i * i for i in range(1, n + 1))
        return np.array([sum(i * (padded_c[t + n + i] - padded_c[t + n - i]) for i in range(1, n + 1)) / denom
                         for t in range(len(c))])

    d1 = delta(static)
    return np.hstack([static, d1, delta(d1)])


def write_wav(path, samples):
    sf.write(path, np.asarray(samples, dtype=np.float32), SR, subtype="PCM_16")
    return str(path)


def test_mfcc_matches_independent_implementation_on_fractional_frame_clock(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(int(1.2 * SR)) / SR
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(len(t))
    wav = write_wav(tmp_path / "s.wav", signal)
    signal = sf.read(wav)[0]  # the 16-bit quantised samples both sides see
    times = np.arange(35) / 29.97  # NTSC rate: hops of 533.87 samples
    p = MfccParams()
    ours = compute_mfcc(wav, times, 0.0, p, block_frames=8)  # several blocks
    ref = reference_mfcc(signal, times, p)
    assert ours.shape == (35, 39)
    # tolerance: ours is computed in float64 and stored as float32 (values up to ~100)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_mfcc_window_is_centred_on_the_frame_time(tmp_path):
    signal = np.zeros(2 * SR)
    click = int(1.234 * SR)
    signal[click - 40:click + 40] = 0.8 * np.hanning(80)
    wav = write_wav(tmp_path / "click.wav", signal)
    times = np.arange(0, 2, 1 / 100)  # a 100 fps clock: frames 10 ms apart
    energy = compute_mfcc(wav, times, 0.0, MfccParams())[:, 0]
    assert abs(times[np.argmax(energy)] - 1.234) <= 0.005
    # and with the audio starting 0.5 s after the first frame, the peak moves with it
    energy = compute_mfcc(wav, times, -0.5, MfccParams())[:, 0]
    assert abs(times[np.argmax(energy)] - (1.234 - 0.5)) <= 0.005


# --- VGGish front end -----------------------------------------------------------------------

def test_vggish_log_mel_of_a_pure_tone_matches_hand_computation():
    """A 1 kHz tone of amplitude 0.5: direct DFT sum and the mel triangles written out."""
    f0, amp = 1000.0, 0.5
    n = np.arange(400)
    samples = amp * np.sin(2 * np.pi * f0 * n / SR)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)  # periodic Hann
    x = samples * hann
    k = np.arange(257)
    dft = np.array([abs(sum(x * np.exp(-2j * np.pi * kk * n / 512))) for kk in k])
    mel = lambda f: 1127.0 * np.log(1 + f / 700.0)
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    bins_mel = mel(k * SR / 512)
    expected = np.empty(64)
    for band in range(64):
        lo, c, hi = edges[band:band + 3]
        w = np.clip(np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c)), 0, None)
        w[0] = 0.0
        expected[band] = np.log(np.dot(dft, w) + 0.01)
    ours = VGGishFrontEnd().log_mel(torch.tensor(samples, dtype=torch.float32))
    assert ours.shape == (1, 64)
    # float32 FFT: 1e-3 in the log domain is 0.1 % of the band energy
    np.testing.assert_allclose(ours[0].numpy(), expected, atol=1e-3)
    # the tone's energy sits in the band whose centre is nearest 1 kHz (in mel)
    assert np.argmax(expected) == np.argmin(abs(edges[1:-1] - mel(f0)))
    # a bin-centred tone of amplitude A under a 400-point Hann peaks at A * sum(w) / 2
    assert dft[32] == pytest.approx(amp * hann.sum() / 2, rel=1e-9)


def test_vggish_examples_are_centred_on_frame_times():
    times = np.array([0.0, 0.5, 1.0, 12.34])
    starts = example_starts(times, 0.0)
    centres = (starts * 160 + EXAMPLE_SPAN / 2) / SR
    assert np.all(np.abs(centres - times) <= 0.005)  # within half a 10 ms hop


# --- whole extractors -----------------------------------------------------------------------

def audio_meta(n_frames, fps=25.0, audio_missing=False):
    return {"frame_times": (np.arange(n_frames) / fps).tolist(), "audio_start_s": 0.0, "audio_missing": audio_missing}


def read(path):
    with h5py.File(path) as h5:
        return h5["features"][:], dict(h5.attrs), {k: h5[k][:] for k in h5 if k != "features"}


@pytest.mark.parametrize("seconds", [0.0, 1.0])  # an empty WAV, and one second of silence
def test_silence_gives_finite_features_and_short_wav_is_padded(tmp_path, seconds):
    wav = write_wav(tmp_path / "silent.wav", np.zeros(int(seconds * SR)))
    meta = audio_meta(50, audio_missing=True)  # 2 s of video: longer than the WAV
    extract_mfcc(wav, meta, tmp_path / "m.h5", MfccParams())
    extract_vggish(wav, meta, tmp_path / "v.h5", VggishParams(batch_size=16), weights=None)
    for name, dim in (("m.h5", 39), ("v.h5", 128)):
        feats, attrs, extra = read(tmp_path / name)
        assert feats.shape == (50, dim) and np.isfinite(feats).all()
        assert attrs["audio_missing"]
        np.testing.assert_allclose(extra["timestamps"], np.arange(50) / 25)
        # frames past the end of the WAV see silence, as the silent ones do
        np.testing.assert_allclose(feats[-1], feats[-2], atol=1e-6)


def test_extractors_are_deterministic(tmp_path, video_factory):
    from vafusion.audio import extract_audio
    from vafusion.faces import align_trial_faces
    from conftest import GRID

    meta = extract_audio(GRID / "bbaf2n.mpg", tmp_path / "a.wav", tmp_path / "a.json")
    align_trial_faces(GRID / "bbaf2n.mpg", tmp_path / "faces.h5", trial="bbaf2n")
    for run in ("1", "2"):
        extract_mfcc(tmp_path / "a.wav", meta, tmp_path / f"m{run}.h5", MfccParams())
        extract_vggish(tmp_path / "a.wav", meta, tmp_path / f"v{run}.h5", VggishParams(), weights=None)
        extract_iresnet50(tmp_path / "faces.h5", tmp_path / f"i{run}.h5", IresnetParams(batch_size=16), weights=None)
    for name, dim in (("m", 39), ("v", 128), ("i", 512)):
        first, attrs, _ = read(tmp_path / f"{name}1.h5")
        second, _, _ = read(tmp_path / f"{name}2.h5")
        assert first.shape == (75, dim)
        np.testing.assert_array_equal(first, second)
        assert first.std() > 0  # features vary from frame to frame
    _, attrs, extra = read(tmp_path / "i1.h5")
    assert attrs["weights"] == "random-init" and attrs["weights_sha256"] == "random-init"
    assert extra["face_found"].mean() > 0.95
    assert json.loads(attrs["params"])["batch_size"] == 16


def test_faces_file_without_any_face(tmp_path):
    from vafusion.faces import FaceTrackWriter

    with h5py.File(tmp_path / "faces.h5", "w") as h5:
        writer = FaceTrackWriter(h5)
        for i in range(20):
            writer.add(i / 25, None)
        writer.flush()
    extract_iresnet50(tmp_path / "faces.h5", tmp_path / "i.h5", IresnetParams(batch_size=8), weights=None)
    feats, _, extra = read(tmp_path / "i.h5")
    assert feats.shape == (20, 512) and np.isfinite(feats).all()
    assert not extra["face_found"].any()


def test_faces_file_with_raw_pixels_is_refused(tmp_path):
    """Faces files of older vafusion versions held raw pixels; they must be rebuilt, not
    misread as JPEGs."""
    with h5py.File(tmp_path / "faces.h5", "w") as h5:
        h5["faces"] = np.zeros((4, 112, 112, 3), np.uint8)
        h5["timestamps"] = np.arange(4) / 25
        h5["face_found"] = np.ones(4, bool)
    with pytest.raises(ValueError, match="older vafusion"):
        extract_iresnet50(tmp_path / "faces.h5", tmp_path / "i.h5", IresnetParams(batch_size=8), weights=None)
    assert not (tmp_path / "i.h5").exists()


# --- what a dropped audio frame gets (the missing-audio experiment) ------------------------------

def test_missing_audio_fills_are_zeros_at_the_networks_input_and_silence(tmp_path):
    """zeros (the paper's "replaced by zeros" at the audio input): MFCC rows of 0, VGGish's
    embedding of an all-zero log-mel example, computed here by the network itself on the
    same seeded weights; silence: the extractors on an all-zero waveform (the old fill)."""
    from vafusion.features import registry
    from vafusion.features.silence import fill_features, read_fill
    from vafusion.models.vggish import VGGish
    from vafusion.weights import load_weights

    final_relu = False  # Google's pre-activation embedding: the fill must follow the setting
    params = VggishParams(batch_size=16, final_relu=final_relu)
    fills = {}
    for name, settings in (("mfcc", MfccParams().as_dict()), ("vggish", params.as_dict())):
        job = registry.ExtractJob(stream=name, output="", settings=settings, weights={"vggish": None}, device="cpu",
                                  seed=3)
        fills[name] = tmp_path / f"{name}.h5"
        fill_features(fills[name], registry.get(name), job)
    zeros, silent = read_fill(fills, "zeros"), read_fill(fills, "silence")
    assert zeros["mfcc"].shape == (39,) and not zeros["mfcc"].any()
    network = VGGish(final_relu=final_relu)
    load_weights(network, None, what="vggish", seed=3)
    with torch.no_grad():
        expected = network.eval()(torch.zeros(1, 1, 96, 64))[0].numpy()
    np.testing.assert_allclose(zeros["vggish"], expected, rtol=1e-5, atol=1e-6)

    wav = write_wav(tmp_path / "silent.wav", np.zeros(3 * SR))
    meta = audio_meta(75, audio_missing=True)
    extract_mfcc(wav, meta, tmp_path / "m.h5", MfccParams())
    extract_vggish(wav, meta, tmp_path / "v.h5", params, weights=None, seed=3)
    np.testing.assert_allclose(silent["mfcc"], read(tmp_path / "m.h5")[0][37], atol=1e-6)
    np.testing.assert_allclose(silent["vggish"], read(tmp_path / "v.h5")[0][37], atol=1e-5)
    assert np.abs(silent["mfcc"]).max() > 1  # the log floor of silence is not zero: a different input
    with pytest.raises(ValueError, match="unknown missing-audio fill 'noise'"):
        read_fill(fills, "noise")
