"""eGeMAPSv02 (openSMILE) on the video's frame clock: two streams from one module.

- ``egemaps``: the 88 eGeMAPSv02 functionals over the window of ``window_s`` (1 s)
  STARTING at each video frame's presentation time, the form of Praveen et al.'s RJCMA
  preprocessing, which calls openSMILE once per 1-s window.
- ``egemaps_lld``: the 25 eGeMAPSv02 low-level descriptors (LLDs) of the 10 ms LLD frame
  centred nearest each video frame's presentation time.

Why not call openSMILE once per window: each call builds openSMILE's component graph and
computes the LLDs of its whole second of audio, for every frame: ~22 ms of CPU per frame
here (``benchmarks/bench_egemaps.py``), 12 CPU hours for Aff-Wild2's 2 M frames.

What runs instead: ONE openSMILE pass per chunk of the video (``chunk_s`` with
``context_s`` of audio either side), with the opensmile package's own eGeMAPSv02 config
files, unchanged. Each 10 ms LLD frame is computed once; the functionals are still
computed by openSMILE's own cFunctionals components, over a list of (overlapping)
windows: cFunctionals is a cWinToVecProcessor, whose ``frameMode = list`` reads a file of
``first-last`` LLD-frame intervals. The package's configs include every cFunctionals'
frame mode from the file named by the ``frameModeFunctionalsConf`` option: we point it at
a list-mode include, and a small top config (``_top_config``) includes eGeMAPSv02.conf and
re-opens the sections of the functionals on the 20 ms-frame path to give them their own
list, because a per-window call summarises a different number of LLD frames on the two
paths (measured against openSMILE's per-window output, both from the window's start):

- 20 ms-frame path (loudness, spectral flux, MFCC 1-4, loudness peaks, Leq): the frames
  wholly inside the window, ``floor(100 w) - 1`` (99 for 1 s);
- 60 ms-frame path (F0, voicing, jitter, shimmer, HNR, harmonics, formants, voiced and
  unvoiced spectral, voiced/unvoiced segments): ``floor(100 w) - 6`` (94 for 1 s: the
  per-window run's last 60 ms frame ends its input, and its segment statistics agree
  with 94 frames, not 95).

Speed (``bench_egemaps.py``, CPU time, one thread): ~0.65 ms per 25 fps frame, ~0.55 ms
per 30 fps frame: 35-45x less than the per-window call. The bound is openSMILE's own LLD
extraction (real-time factor ~0.014: 0.55 ms of each 25 fps frame), which any scheme must
run once over the audio: the speed-up can be at most (LLDs of 1 s + set-up) / (LLDs of
1/fps s), about 1.5 x fps, so 100x is out of reach on one core; ``job.threads`` chunks
run in parallel.

Windows start on the 10 ms LLD grid anchored at the first window's start sample, each
snapped to the nearest grid frame: exact for frame rates whose frame step is a multiple of
10 ms (25 fps) and at most 5 ms (half an LLD hop) off otherwise (the file records the
largest offset, ``max_window_offset_ms``). The audio is zero-padded where a window runs
past the end of the WAV (or starts before it), as ``read_audio_segment`` does for the
other streams: the last second of a video's frames sees digital silence after its end.

Tolerance against openSMILE's own per-window output (``Smile(eGeMAPSv02,
Functionals).process_signal`` on the 1-s cut, zero-padded past the audio): the one pass
sees a window's LLD frames with their context, the per-window call without, so they
differ at the window's edges only: the 3-frame smoothing (sma3) of its first and last
frames, the spectral flux of its first frame, the start and end of the Viterbi pitch
smoother and of the jitter/shimmer period tracking. These can flip an edge frame's
voicing, and then a voiced-only functional of a nearly unvoiced window moves by a whole
value. Measured on the 11 GRID clips at 25 fps (209 windows, a third past the audio's
end), |difference| / the functional's std across windows: Leq exact; per group (F0,
loudness, flux/MFCC, voiced, unvoiced, loudness peaks, segments) median <= 0.002, 95th
percentile <= 0.07, share above 1 std <= 0.7 % (max 150 std, a voicing flip in a
functional with a small std); 70 % of the F0 functionals exact. ``TOLERANCE`` holds the
looser bounds the tests assert on a 30-window sample. At 29.97 fps (windows snapped by up to
5 ms) the deviation is that of openSMILE against itself with its window moved by up to
5 ms (median <= 0.02, 95th percentile <= 0.5 std): the framing phase, not the one pass.

LLDs (``egemaps_lld``): openSMILE's LLD row k holds the 20 ms frame and the 60 ms frame
that both START at k x 10 ms (their centres are 10 and 30 ms later); we take for each
video frame the row whose mean centre, k x 10 ms + 20 ms, is nearest its time, on a grid
anchored so that this is exact for the first frame (within 5 ms for the others, the
file's ``max_frame_offset_ms``). Each pass starts and ends where the WAV does, zero-padded
only where a frame's row reaches outside it, so the rows are bit-identical to openSMILE's
LLD output for the whole file (chunk edges included, ``context_s`` 1 s), except the few
rows within ~50 ms of such padding, whose context differs.

Digital silence: openSMILE floors its logarithms (formant amplitudes -201 dB, Leq -120
dB, F0 0 when unvoiced), so silent windows give finite rows; any non-finite value that
still came out would be set to 0 (counted in the file's ``nonfinite_replaced``).

Threads: chunks are independent openSMILE instances, run ``job.threads`` at a time (ctypes
releases the GIL inside openSMILE). The chunk grid depends only on the settings, never on
the thread count, so results do not depend on it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vafusion.features.common import FeatureFile, provenance, read_audio_segment
from vafusion.jobs import Progress

log = logging.getLogger(__name__)

FUNCTIONALS_DIM = 88
LLD_DIM = 25

# openSMILE's own output column names (``opensmile.Smile(...).feature_names``), in its order.
FUNCTIONAL_NAMES = (
    "F0semitoneFrom27.5Hz_sma3nz_amean", "F0semitoneFrom27.5Hz_sma3nz_stddevNorm",
    "F0semitoneFrom27.5Hz_sma3nz_percentile20.0", "F0semitoneFrom27.5Hz_sma3nz_percentile50.0",
    "F0semitoneFrom27.5Hz_sma3nz_percentile80.0", "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2",
    "F0semitoneFrom27.5Hz_sma3nz_meanRisingSlope", "F0semitoneFrom27.5Hz_sma3nz_stddevRisingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_meanFallingSlope", "F0semitoneFrom27.5Hz_sma3nz_stddevFallingSlope",
    "loudness_sma3_amean", "loudness_sma3_stddevNorm", "loudness_sma3_percentile20.0",
    "loudness_sma3_percentile50.0", "loudness_sma3_percentile80.0", "loudness_sma3_pctlrange0-2",
    "loudness_sma3_meanRisingSlope", "loudness_sma3_stddevRisingSlope", "loudness_sma3_meanFallingSlope",
    "loudness_sma3_stddevFallingSlope",
    "spectralFlux_sma3_amean", "spectralFlux_sma3_stddevNorm",
    "mfcc1_sma3_amean", "mfcc1_sma3_stddevNorm", "mfcc2_sma3_amean", "mfcc2_sma3_stddevNorm",
    "mfcc3_sma3_amean", "mfcc3_sma3_stddevNorm", "mfcc4_sma3_amean", "mfcc4_sma3_stddevNorm",
    "jitterLocal_sma3nz_amean", "jitterLocal_sma3nz_stddevNorm",
    "shimmerLocaldB_sma3nz_amean", "shimmerLocaldB_sma3nz_stddevNorm",
    "HNRdBACF_sma3nz_amean", "HNRdBACF_sma3nz_stddevNorm",
    "logRelF0-H1-H2_sma3nz_amean", "logRelF0-H1-H2_sma3nz_stddevNorm",
    "logRelF0-H1-A3_sma3nz_amean", "logRelF0-H1-A3_sma3nz_stddevNorm",
    "F1frequency_sma3nz_amean", "F1frequency_sma3nz_stddevNorm",
    "F1bandwidth_sma3nz_amean", "F1bandwidth_sma3nz_stddevNorm",
    "F1amplitudeLogRelF0_sma3nz_amean", "F1amplitudeLogRelF0_sma3nz_stddevNorm",
    "F2frequency_sma3nz_amean", "F2frequency_sma3nz_stddevNorm",
    "F2bandwidth_sma3nz_amean", "F2bandwidth_sma3nz_stddevNorm",
    "F2amplitudeLogRelF0_sma3nz_amean", "F2amplitudeLogRelF0_sma3nz_stddevNorm",
    "F3frequency_sma3nz_amean", "F3frequency_sma3nz_stddevNorm",
    "F3bandwidth_sma3nz_amean", "F3bandwidth_sma3nz_stddevNorm",
    "F3amplitudeLogRelF0_sma3nz_amean", "F3amplitudeLogRelF0_sma3nz_stddevNorm",
    "alphaRatioV_sma3nz_amean", "alphaRatioV_sma3nz_stddevNorm",
    "hammarbergIndexV_sma3nz_amean", "hammarbergIndexV_sma3nz_stddevNorm",
    "slopeV0-500_sma3nz_amean", "slopeV0-500_sma3nz_stddevNorm",
    "slopeV500-1500_sma3nz_amean", "slopeV500-1500_sma3nz_stddevNorm",
    "spectralFluxV_sma3nz_amean", "spectralFluxV_sma3nz_stddevNorm",
    "mfcc1V_sma3nz_amean", "mfcc1V_sma3nz_stddevNorm", "mfcc2V_sma3nz_amean", "mfcc2V_sma3nz_stddevNorm",
    "mfcc3V_sma3nz_amean", "mfcc3V_sma3nz_stddevNorm", "mfcc4V_sma3nz_amean", "mfcc4V_sma3nz_stddevNorm",
    "alphaRatioUV_sma3nz_amean", "hammarbergIndexUV_sma3nz_amean", "slopeUV0-500_sma3nz_amean",
    "slopeUV500-1500_sma3nz_amean", "spectralFluxUV_sma3nz_amean",
    "loudnessPeaksPerSec", "VoicedSegmentsPerSec", "MeanVoicedSegmentLengthSec", "StddevVoicedSegmentLengthSec",
    "MeanUnvoicedSegmentLength", "StddevUnvoicedSegmentLength", "equivalentSoundLevel_dBp",
)
LLD_NAMES = (
    "Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3", "slope500-1500_sma3",
    "spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz", "F1frequency_sma3nz", "F1bandwidth_sma3nz",
    "F1amplitudeLogRelF0_sma3nz", "F2frequency_sma3nz", "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz", "F3bandwidth_sma3nz", "F3amplitudeLogRelF0_sma3nz",
)

# Functional groups (column slices of FUNCTIONAL_NAMES) by the LLD path they summarise:
# their per-window agreement with openSMILE differs (see TOLERANCE).
GROUPS = {
    "F0": slice(0, 10),
    "loudness": slice(10, 20),
    "flux_mfcc": slice(20, 30),
    "voiced": slice(30, 76),  # jitter, shimmer, HNR, harmonics, formants, voiced spectral
    "unvoiced": slice(76, 81),
    "loudness_peaks": slice(81, 82),
    "segments": slice(82, 87),  # voiced/unvoiced segment rate, lengths
    "leq": slice(87, 88),
}
# Per group: bounds on |one pass - per-window openSMILE| / the functional's std across
# windows that the tests hold the extractor to on GRID clips (25 fps): (median, 95th
# percentile, share of entries above 1 std). The measured values are well inside (module
# docstring; benchmarks/bench_egemaps.py prints them); Leq is exact.
TOLERANCE = {
    "F0": (0.02, 0.3, 0.03), "loudness": (0.02, 0.2, 0.03), "flux_mfcc": (0.02, 0.2, 0.03),
    "voiced": (0.02, 0.3, 0.03), "unvoiced": (0.02, 0.3, 0.03), "loudness_peaks": (0.02, 0.2, 0.03),
    "segments": (0.02, 0.3, 0.03), "leq": (1e-5, 1e-5, 0.0),
}

LLD_HOP_S = 0.010  # openSMILE eGeMAPS: an LLD frame every 10 ms
SHORT_FRAME_S, LONG_FRAME_S = 0.020, 0.060  # its two analysis frame lengths (spectral/energy; pitch/voice)
LLD_CENTRE_HOPS = 2  # row k's frames are centred at k+1 (20 ms) and k+3 (60 ms) hops: mean k+2

# The cFunctionals whose input is on the 20 ms-frame path; all others read 60 ms-path LLDs.
SHORT_PATH_FUNCTIONALS = ("gemapsv01b_functionalsLoudness", "egemapsv02_functionalsMVR",
                          "gemapsv01b_temporalLoudness", "egemapsv02_leqLin")
# cFunctionals of the GeMAPS part whose output eGeMAPSv02 does not use: once, not per window.
UNUSED_FUNCTIONALS = ("gemapsv01b_functionalsMeanSpectralUV", "gemapsv01b_functionalsMVRVoiced")

_FRAME_MODE_INCLUDE = """\
; vafusion: every cFunctionals summarises a list of windows (LLD-frame intervals) instead
; of the whole input; the 20 ms-path functionals get their own list (see the top config)
frameMode = list
frameListFile = \\cm[frameListLong{?}:windows of the 60 ms-frame path functionals]
frameCenterSpecial = left
noPostEOIprocessing = 0
"""


def _top_config() -> str:
    """The config openSMILE runs for ``egemaps``: the package's eGeMAPSv02.conf, included
    as it is, then sections re-opened to set the list of the 20 ms-path functionals."""
    sections = "".join(f"\n[{name}:cFunctionals]\nframeListFile = \\cm[frameListShort{{?}}:windows of the 20 ms-frame "
                       f"path functionals]\n" for name in SHORT_PATH_FUNCTIONALS)
    sections += "".join(f"\n[{name}:cFunctionals]\nframeMode = full\n" for name in UNUSED_FUNCTIONALS)
    return ("; vafusion: the opensmile package's eGeMAPSv02 config with its functionals over lists of windows\n\\{\\cm[egemapsConfig{?}:the eGeMAPSv02.conf of the opensmile package]}\n" + sections)


@dataclass(frozen=True)
class EgemapsParams:
    """Settings of the ``egemaps`` stream (config.yaml ``features.egemaps`` + sample rate)."""

    sample_rate: int
    window_s: float  # functionals over [frame time, frame time + window_s)
    chunk_s: float  # one openSMILE pass per chunk of windows (fixed grid: results do not depend on threads)
    context_s: float  # audio either side of a chunk's windows, so that chunk edges are no window edges

    def __post_init__(self):
        window_frames(self.window_s)  # raises if too short
        _check_chunking(self.chunk_s, self.context_s)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EgemapsLldParams:
    """Settings of the ``egemaps_lld`` stream (config.yaml ``features.egemaps_lld`` + sample rate)."""

    sample_rate: int
    chunk_s: float
    context_s: float

    def __post_init__(self):
        _check_chunking(self.chunk_s, self.context_s)

    def as_dict(self) -> dict:
        return asdict(self)


def _check_chunking(chunk_s: float, context_s: float) -> None:
    if not chunk_s > 0 or not context_s >= 0:
        raise ValueError(f"eGeMAPS needs chunk_s > 0 and context_s >= 0, not {chunk_s} and {context_s}")


def _hop(sample_rate: int) -> int:
    hop = sample_rate * LLD_HOP_S
    if abs(hop - round(hop)) > 1e-9:
        raise ValueError(f"eGeMAPS needs a sample rate that is a multiple of 100 Hz, not {sample_rate}")
    return int(round(hop))


def window_frames(window_s: float) -> tuple[int, int]:
    """(20 ms-path, 60 ms-path) LLD frames of a window: what openSMILE's own run on a cut
    of ``window_s`` seconds summarises (99 and 94 for 1 s)."""
    hops = int(math.floor(window_s / LLD_HOP_S + 1e-6))
    short = hops - int(round(SHORT_FRAME_S / LLD_HOP_S)) + 1
    long = hops - int(round(LONG_FRAME_S / LLD_HOP_S))
    if long < 3:  # cWinToVecProcessor's list mode needs at least 3 frames
        raise ValueError(f"egemaps.window_s must be at least 0.09 s, not {window_s}")
    return short, long


def snap_to_grid(samples: np.ndarray, hop: int) -> tuple[np.ndarray, int]:
    """(index of the nearest LLD frame of each position, origin sample of the grid): a 10 ms
    grid anchored at the earliest position, so that one is exact."""
    samples = np.asarray(samples, dtype=np.int64)
    origin = int(samples.min()) if len(samples) else 0
    return np.floor((samples - origin) / hop + 0.5).astype(np.int64), origin


def config_files() -> list[Path]:
    """The opensmile package's eGeMAPSv02 config and the files it includes."""
    import opensmile

    root = Path(opensmile.__file__).resolve().parent / "core" / "config"
    return [root / "egemaps/v02/eGeMAPSv02.conf",
            root / "gemaps/v01b/GeMAPSv01b_core.lld.conf.inc", root / "egemaps/v02/eGeMAPSv02_core.lld.conf.inc",
            root / "gemaps/v01b/GeMAPSv01b_core.func.conf.inc", root / "egemaps/v02/eGeMAPSv02_core.func.conf.inc"]


def weights_info() -> dict:
    """Provenance of the "weights": openSMILE's config (its files and our overlay) and build."""
    return dict(_weights_info())


@functools.lru_cache(maxsize=1)
def _weights_info() -> dict:
    import opensmile
    from opensmile.core.lib import smileapi_path

    digest = hashlib.sha256()
    for path in config_files():
        digest.update(path.read_bytes())
    digest.update(_top_config().encode() + _FRAME_MODE_INCLUDE.encode())
    library = hashlib.sha256(Path(smileapi_path).read_bytes()).hexdigest()
    return {"weights": f"openSMILE eGeMAPSv02 (package opensmile {opensmile.__version__}, "
                       f"{Path(smileapi_path).name} sha256:{library[:16]})",
            "weights_sha256": digest.hexdigest(), "weights_seed": -1}


class _Pass:
    """One openSMILE run over a span of the WAV (zero-padded outside it), on the LLD grid
    starting at ``origin`` (a sample index, may be negative)."""

    def __init__(self, wav_path: str, origin: int, hop: int, sample_rate: int, workdir: Path | None = None):
        self.wav_path, self.origin, self.hop, self.sample_rate, self.workdir = wav_path, origin, hop, sample_rate, workdir

    def audio(self, first: int, stop: int) -> np.ndarray:
        """Samples of LLD frames [first, stop) (grid indices): float32, zeros outside the WAV."""
        with sf.SoundFile(self.wav_path) as wav:
            if wav.samplerate != self.sample_rate:
                raise ValueError(f"{self.wav_path}: sample rate {wav.samplerate}, expected {self.sample_rate}")
            return read_audio_segment(wav, self.origin + first * self.hop, self.origin + stop * self.hop)

    def functionals(self, starts: np.ndarray, first: int, stop: int, frames: tuple[int, int], tag: str) -> np.ndarray:
        """(len(starts), 88): functionals of the windows starting at LLD frames ``starts``
        (grid indices, increasing), from one pass over frames [first, stop)."""
        import opensmile

        local = starts - first
        lists = {}
        for path_name, n in zip(("short", "long"), frames):
            lists[path_name] = self.workdir / f"{tag}_{path_name}.txt"
            # openSMILE reads the first line only: "first-last" LLD frames, inclusive
            lists[path_name].write_text(",".join(f"{a}-{a + n - 1}" for a in local.tolist()) + "\n")
        smile = opensmile.Smile(
            feature_set=str(self.workdir / "egemaps_windows.conf"), feature_level="func",
            options={"egemapsConfig": str(config_files()[0]), "frameModeFunctionalsConf": str(self.workdir / "list.inc"),
                     "frameListShort": str(lists["short"]), "frameListLong": str(lists["long"])})
        out = smile.process_signal(self.audio(first, stop), self.sample_rate)
        _check_columns(list(out.columns), FUNCTIONAL_NAMES)
        if len(out) != len(starts):
            raise RuntimeError(f"openSMILE gave {len(out)} windows for {len(starts)} in {self.wav_path} (frames "
                               f"{first}..{stop})")
        return out.to_numpy(dtype=np.float32)

    def llds(self, first: int, stop: int) -> np.ndarray:
        """(rows, 25): the LLD rows of one pass over frames [first, stop); row r is frame first + r."""
        import opensmile

        smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level="lld")
        out = smile.process_signal(self.audio(first, stop), self.sample_rate)
        _check_columns(list(out.columns), LLD_NAMES)
        return out.to_numpy(dtype=np.float32)


def _check_columns(got: list[str], expected: tuple[str, ...]) -> None:
    if tuple(got) != expected:
        raise RuntimeError(f"openSMILE's eGeMAPSv02 columns changed: {got[:3]}... (expected {expected[:3]}...)")


def _chunks(index: np.ndarray, chunk_frames: int) -> list[np.ndarray]:
    """Positions in the sorted ``index`` of each chunk of the fixed grid of ``chunk_frames``."""
    if not len(index):
        return []
    chunk_of = index // chunk_frames
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    return np.split(np.arange(len(index)), bounds)


def _run_chunks(fn, chunks: list, threads: int, what: str, n_frames: int) -> list:
    progress = Progress(what, n_frames)
    done, results = 0, []
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        for result in pool.map(fn, chunks):  # in order
            results.append(result)
            done += len(result)
            progress.update(done)
    return results


def _finite(rows: np.ndarray) -> tuple[np.ndarray, int]:
    bad = ~np.isfinite(rows)
    if bad.any():
        log.warning("openSMILE gave %d non-finite values: set to 0", int(bad.sum()))
        rows = np.where(bad, np.float32(0), rows)
    return rows, int(bad.sum())


def compute_functionals(wav_path: str, frame_times: np.ndarray, audio_start: float, params: EgemapsParams,
                        threads: int = 1) -> tuple[np.ndarray, dict]:
    """(T, 88) eGeMAPSv02 functionals of the windows starting at ``frame_times`` and facts
    for the file's attributes."""
    hop = _hop(params.sample_rate)
    frames = window_frames(params.window_s)
    starts = np.round((np.asarray(frame_times, dtype=np.float64) - audio_start) * params.sample_rate).astype(np.int64)
    index, origin = snap_to_grid(starts, hop)
    offset_ms = float(np.abs(starts - origin - index * hop).max(initial=0) / params.sample_rate * 1000)
    unique, inverse = np.unique(index, return_inverse=True)  # windows shared by frames closer than 5 ms
    context = int(round(params.context_s / LLD_HOP_S))
    chunk_frames = max(1, int(round(params.chunk_s / LLD_HOP_S)))
    window_hops = int(math.floor(params.window_s / LLD_HOP_S + 1e-6))
    with tempfile.TemporaryDirectory(prefix="egemaps_") as tmp:
        workdir = Path(tmp)
        (workdir / "egemaps_windows.conf").write_text(_top_config())
        (workdir / "list.inc").write_text(_FRAME_MODE_INCLUDE)
        runner = _Pass(wav_path, origin, hop, params.sample_rate, workdir)

        def chunk(positions: np.ndarray) -> np.ndarray:
            windows = unique[positions]
            # The input starts at the first window's start and ends at the last window's end, as
            # in a per-window call; a chunk's other edges get context_s of audio.
            first = max(0, int(windows[0]) // chunk_frames * chunk_frames - context)
            stop = int(windows[-1]) + window_hops + (0 if windows[-1] == unique[-1] else context)
            return runner.functionals(windows, first, stop, frames, tag=f"chunk{positions[0]}")

        parts = _run_chunks(chunk, _chunks(unique, chunk_frames), threads, f"egemaps of {wav_path}", len(unique))
    rows, replaced = _finite(np.concatenate(parts) if parts else np.zeros((0, FUNCTIONALS_DIM), np.float32))
    facts = {"max_window_offset_ms": offset_ms, "nonfinite_replaced": replaced}
    return rows[inverse], facts


def compute_llds(wav_path: str, frame_times: np.ndarray, audio_start: float, params: EgemapsLldParams,
                 threads: int = 1) -> tuple[np.ndarray, dict]:
    """(T, 25) eGeMAPSv02 LLDs of the 10 ms frame centred nearest each of ``frame_times``."""
    hop = _hop(params.sample_rate)
    centres = np.round((np.asarray(frame_times, dtype=np.float64) - audio_start) * params.sample_rate).astype(np.int64)
    index, centre_origin = snap_to_grid(centres, hop)
    # Row k's frames start at origin + k hops and are centred (on average) at centre_origin + k hops.
    origin = centre_origin - LLD_CENTRE_HOPS * hop
    offset_ms = float(np.abs(centres - centre_origin - index * hop).max(initial=0) / params.sample_rate * 1000)
    context = int(round(params.context_s / LLD_HOP_S))
    chunk_frames = max(1, int(round(params.chunk_s / LLD_HOP_S)))
    long_hops = int(round(LONG_FRAME_S / LLD_HOP_S))
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    runner = _Pass(wav_path, origin, hop, params.sample_rate)
    # The input starts and ends where the WAV does (as openSMILE's own run on the file),
    # unless the frames need rows outside it (zero-padded) or the WAV runs on for long.
    wav_start = (-origin) // hop  # grid frames at the WAV's start (floor) and end (ceil)
    wav_end = -(-(sf.info(wav_path).frames - origin) // hop)

    def chunk(positions: np.ndarray) -> np.ndarray:
        rows = sorted_index[positions]
        first = max(int(rows[0]) // chunk_frames * chunk_frames - context, min(0, wav_start))
        stop = int(rows[-1]) + long_hops + 1 + context
        if rows[-1] == sorted_index[-1]:
            stop = min(stop, max(int(rows[-1]) + long_hops + 1, wav_end))
        lld = runner.llds(first, stop)
        if int(rows[-1]) - first >= len(lld):
            raise RuntimeError(f"openSMILE gave {len(lld)} LLD rows for frames {first}..{stop} of {wav_path}")
        return lld[rows - first]

    parts = _run_chunks(chunk, _chunks(sorted_index, chunk_frames), threads, f"egemaps_lld of {wav_path}",
                        len(sorted_index))
    rows, replaced = _finite(np.concatenate(parts) if parts else np.zeros((0, LLD_DIM), np.float32))
    out = np.empty_like(rows)
    out[order] = rows
    return out, {"max_frame_offset_ms": offset_ms, "nonfinite_replaced": replaced}


def extract_egemaps(wav_path: str, meta: dict, out_path: str, params: EgemapsParams, threads: int = 1) -> None:
    """Write ``out_path``: (T, 88) eGeMAPSv02 functionals on the video's frame clock."""
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    features, facts = compute_functionals(wav_path, times, meta["audio_start_s"], params, threads)
    described = {**params.as_dict(), "window": "starts at the frame time, snapped to the 10 ms LLD grid",
                 "window_lld_frames": dict(zip(("short_path", "long_path"), window_frames(params.window_s))),
                 "past_audio": "zero-padded", "feature_set": "eGeMAPSv02 functionals"}
    attrs = provenance("egemaps", described, weights_info(), torch.device("cpu"))
    attrs.update({"audio_missing": bool(meta["audio_missing"]), "columns": ",".join(FUNCTIONAL_NAMES), **facts})
    with FeatureFile(out_path, times, FUNCTIONALS_DIM, attrs) as out:
        out.write(0, features)
    log.info("egemaps: %d frames -> %s", len(times), out_path)


def extract_egemaps_lld(wav_path: str, meta: dict, out_path: str, params: EgemapsLldParams, threads: int = 1) -> None:
    """Write ``out_path``: (T, 25) eGeMAPSv02 LLDs on the video's frame clock."""
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    features, facts = compute_llds(wav_path, times, meta["audio_start_s"], params, threads)
    described = {**params.as_dict(), "frame": "the 10 ms LLD row whose 20 and 60 ms frames are centred nearest the "
                 "frame time (mean centre)", "past_audio": "zero-padded", "feature_set": "eGeMAPSv02 LLDs"}
    attrs = provenance("egemaps_lld", described, weights_info(), torch.device("cpu"))
    attrs.update({"audio_missing": bool(meta["audio_missing"]), "columns": ",".join(LLD_NAMES), **facts})
    with FeatureFile(out_path, times, LLD_DIM, attrs) as out:
        out.write(0, features)
    log.info("egemaps_lld: %d frames -> %s", len(times), out_path)


def extract(job) -> None:
    """The ``egemaps`` and ``egemaps_lld`` streams' extractor (``vafusion.features.registry``)."""
    if job.stream == "egemaps":
        extract_egemaps(job.wav, job.meta, job.output, EgemapsParams(**job.settings), job.threads)
    elif job.stream == "egemaps_lld":
        extract_egemaps_lld(job.wav, job.meta, job.output, EgemapsLldParams(**job.settings), job.threads)
    else:
        raise ValueError(f"vafusion.features.egemaps extracts 'egemaps' and 'egemaps_lld', not '{job.stream}'")
