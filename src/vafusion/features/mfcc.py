"""MFCC with deltas, one 39-d vector per video frame.

Conventions (those of the HTK-style front ends the ABAW audio pipelines use, e.g. the
python_speech_features defaults with a Hamming window):

- a 25 ms window (400 samples at 16 kHz) centred on each video frame's presentation time,
  so the hop follows the frame clock, fractional and variable frame rates included;
- pre-emphasis 0.97, applied to the window with its preceding sample;
- symmetric Hamming window, 512-point FFT, power spectrum |X|^2 / 512;
- 26 triangular mel bands (HTK mel scale) from 0 Hz to Nyquist, natural log (floored at
  1e-10 so that silence stays finite);
- DCT-II (orthonormal), coefficients c0..c12 (c0 is kept, not replaced by log energy);
- cepstral liftering with L = 22: c_n * (1 + L/2 sin(pi n / L));
- deltas and delta-deltas over consecutive video frames, regression window N = 2
  (torchaudio's compute_deltas, edge frames replicated).

Built from torchaudio's functional transforms (mel filter bank, DCT matrix, deltas); the
framing is ours because torchaudio's MFCC transform only knows a fixed integer hop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from vafusion.features.common import FeatureFile, provenance, read_audio_segment

LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class MfccParams:
    sample_rate: int = 16000
    window_ms: float = 25.0
    n_fft: int = 512
    preemphasis: float = 0.97
    n_mels: int = 26
    n_ceps: int = 13
    lifter: int = 22
    delta_window: int = 2  # N: deltas regress over frames t-N..t+N

    @property
    def window(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def dim(self) -> int:
        return 3 * self.n_ceps

    def as_dict(self) -> dict:
        return asdict(self)


class MfccFrontEnd:
    def __init__(self, params: MfccParams):
        self.p = params
        self.hamming = torch.hamming_window(params.window, periodic=False, dtype=torch.float64)
        self.mel = AF.melscale_fbanks(params.n_fft // 2 + 1, 0.0, params.sample_rate / 2, params.n_mels,
                                      params.sample_rate, norm=None, mel_scale="htk").double()  # (257, 26)
        self.dct = AF.create_dct(params.n_ceps, params.n_mels, norm="ortho").double()  # (26, 13)
        n = torch.arange(params.n_ceps, dtype=torch.float64)
        self.lifter = 1 + (params.lifter / 2) * torch.sin(math.pi * n / params.lifter) if params.lifter else torch.ones_like(n)

    def static(self, windows: np.ndarray) -> torch.Tensor:
        """(F, window + 1) raw samples (one before the window, for pre-emphasis) -> (F, n_ceps)."""
        x = torch.from_numpy(windows).double()
        x = x[:, 1:] - self.p.preemphasis * x[:, :-1]  # (F, window)
        spectrum = torch.fft.rfft(x * self.hamming, n=self.p.n_fft)  # (F, 257)
        power = spectrum.real**2 + spectrum.imag**2
        power = power / self.p.n_fft
        log_mel = torch.log(torch.clamp(power @ self.mel, min=LOG_FLOOR))  # (F, 26)
        return (log_mel @ self.dct) * self.lifter  # (F, 13)

    def with_deltas(self, static: torch.Tensor) -> torch.Tensor:
        """(T, n_ceps) -> (T, 3 n_ceps): [c, delta c, delta-delta c] along video frames."""
        win = 2 * self.p.delta_window + 1
        seq = static.T.unsqueeze(0)  # (1, n_ceps, T)
        d1 = AF.compute_deltas(seq, win_length=win)
        d2 = AF.compute_deltas(d1, win_length=win)
        return torch.cat([seq, d1, d2], dim=1)[0].T


def window_starts(frame_times: np.ndarray, audio_start: float, params: MfccParams) -> np.ndarray:
    """First sample of the window centred on each frame time (integer sample index)."""
    centres = np.round((np.asarray(frame_times) - audio_start) * params.sample_rate).astype(np.int64)
    return centres - params.window // 2


def compute_mfcc(wav_path: str, frame_times: np.ndarray, audio_start: float, params: MfccParams,
                 block_frames: int = 2048) -> np.ndarray:
    """(T, 39) float32 MFCC+deltas for the video frames at ``frame_times``.

    Audio is read a block of frames at a time, so memory does not grow with the video; the
    (T, 13) static coefficients are small (1 MB for a 10-minute 30 fps video).
    """
    front = MfccFrontEnd(params)
    starts = window_starts(frame_times, audio_start, params)
    n = len(starts)
    static = torch.zeros(n, params.n_ceps, dtype=torch.float64)
    width = params.window + 1
    with sf.SoundFile(wav_path) as wav:
        if wav.samplerate != params.sample_rate:
            raise ValueError(f"{wav_path}: sample rate {wav.samplerate}, MFCC expects {params.sample_rate}")
        for lo in range(0, n, block_frames):
            hi = min(lo + block_frames, n)
            seg_start = int(starts[lo:hi].min()) - 1
            segment = read_audio_segment(wav, seg_start, int(starts[lo:hi].max()) + params.window)
            index = (starts[lo:hi] - 1 - seg_start)[:, None] + np.arange(width)[None, :]
            static[lo:hi] = front.static(segment[index])
    return front.with_deltas(static).float().numpy()


def extract_mfcc(wav_path: str, meta: dict, out_path: str, params: MfccParams) -> None:
    """Write ``out_path``: (T, 39) MFCC+deltas on the video's frame clock."""
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    features = compute_mfcc(wav_path, times, meta["audio_start_s"], params)
    attrs = provenance("mfcc", {**params.as_dict(), "window": "centred on frame time"}, None, torch.device("cpu"))
    attrs["audio_missing"] = bool(meta["audio_missing"])
    with FeatureFile(out_path, times, params.dim, attrs) as out:
        out.write(0, features)


def extract(job) -> None:
    """The ``mfcc`` stream's extractor (``vafusion.features.registry``)."""
    extract_mfcc(job.wav, job.meta, job.output, MfccParams(**job.settings))
