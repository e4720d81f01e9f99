"""Speech presence: silero-vad's speech probability on the video's frame clock (the
``speech`` stream, one value a frame in [0, 1]).

Why: whether the person is talking at all is a strong cue of arousal and tells the fusion
models when the audio stream speaks for the face; a voice activity detector gives it
directly, at a tiny cost.

The model is silero-vad's ONNX export (``silero_vad/data/silero_vad.onnx`` of the
``silero-vad`` package, MIT licence; ``weights.speech`` may name another copy), run here
with onnxruntime on the CPU (an ONNX file is a graph: no code of the package runs). The
package's own ``OnnxWrapper`` defines how the model is fed, which ``SileroVad`` follows:

- the audio is cut into consecutive chunks of 512 samples (32 ms at 16 kHz; 256 at 8 kHz),
  the last one zero-padded;
- each call's ``input`` is (1, 64 + 512): the previous chunk's last 64 samples (32 at
  8 kHz; zeros before the first chunk) then the chunk;
- the recurrent ``state`` (2, 1, 128), zeros at the start, is carried from each call's
  ``stateN`` output to the next call: the probability of a chunk depends on all the audio
  before it, so a recording is one sequential pass (no batching over time);
- ``sr`` is the sample rate as an int64 scalar; ``output`` (1, 1) is the chunk's speech
  probability.

Frame clock (as the self-supervised speech streams, ``vafusion.features.ssl``): chunk ``j``
stands for samples [512 j, 512 (j + 1)) of the WAV (j = 0 at its first sample); each video
frame stands for the span half-way to its neighbours (``ssl.frame_spans``); its value is the
mean of the chunks' probabilities over that span, weighted by their overlap with it (the
time average of the piecewise-constant 31.25 Hz probability). At 25-30 fps a frame
averages 2-3 chunks, so one chunk's flicker is damped and no chunk is skipped, which
taking the chunk under the frame's centre would do at frame rates below 31.25 fps. The
audio analysed is the WAV extended with silence where the video's frame spans leave it;
the stream starts at the first chunk a frame needs (the WAV's first chunk unless the video
starts before the audio) and runs without reset to the last chunk needed or the WAV's
end, whichever is later.

Speed: ~360 s of audio per CPU second on one core here (the extractor on 10 minutes of
GRID speech at 30 fps: 1.65 s of CPU; 0.09 ms a chunk, nearly all of it inside
onnxruntime's call), so an hour of audio takes ~10 s; no GPU is used. The
package's "sequence" export runs many chunks per call (2.5x faster here) but is a different
graph whose probabilities differ from the streaming model's (by up to 9e-4 on GRID speech),
so the streaming model, the package's reference, is the one run.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vafusion.features.common import FeatureFile, provenance, read_audio_segment
from vafusion.features import registry
from vafusion.features.registry import shipped_file
from vafusion.features.ssl import frame_spans, frame_weights
from vafusion.jobs import Progress
from vafusion.weights import WeightsError, given_or_shipped, sha256sum

log = logging.getLogger(__name__)

PACKAGE, MODEL_FILE = registry.BUILTIN["speech"].shipped["speech"]  # the entry says where
# sample rate -> (samples per chunk, samples of the previous chunk prepended): silero's protocol
CHUNKING = {16000: (512, 64), 8000: (256, 32)}
STATE_SHAPE = (2, 1, 128)  # the model's recurrent state: (2, batch, 128)
BLOCK_CHUNKS = 4096  # chunks read from the WAV at a time (131 s at 16 kHz): memory does not grow with the video


@dataclass(frozen=True)
class SpeechParams:
    """Settings of the ``speech`` stream (``media.sample_rate``, added by the workflow)."""

    sample_rate: int

    def __post_init__(self):
        if self.sample_rate not in CHUNKING:
            raise ValueError(f"silero-vad takes 16000 or 8000 Hz audio; media.sample_rate is {self.sample_rate}")

    @property
    def chunk(self) -> int:
        return CHUNKING[self.sample_rate][0]

    @property
    def context(self) -> int:
        return CHUNKING[self.sample_rate][1]

    def as_dict(self) -> dict:
        return asdict(self)


def model_path(weights: str | None) -> Path:
    """The ONNX file: ``weights.speech`` when set, else the one silero-vad ships."""
    return given_or_shipped("speech", "speech", weights)


def weights_info(path: Path) -> dict:
    shipped = shipped_file(PACKAGE, MODEL_FILE)
    try:
        version = importlib.metadata.version("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    origin = (f"silero-vad {version}'s {MODEL_FILE}" if shipped is not None and path.resolve() == shipped.resolve()
              else f"{path} (silero-vad ONNX; installed package: {version})")
    return {"weights": f"{origin}, pretrained, MIT licence", "weights_sha256": sha256sum(path), "weights_seed": -1}


class SileroVad:
    """silero-vad's ONNX model as a stream: ``__call__`` takes the next chunk and returns its
    speech probability; ``reset`` starts a new recording."""

    def __init__(self, path: str | Path, sample_rate: int = 16000, threads: int = 1):
        import onnxruntime as ort

        if sample_rate not in CHUNKING:
            raise ValueError(f"silero-vad takes 16000 or 8000 Hz audio, not {sample_rate}")
        self.chunk, self.context_size = CHUNKING[sample_rate]
        self.sr = np.array(sample_rate, dtype=np.int64)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; the file is what is wrong
            raise WeightsError(f"speech: {path} is not a readable ONNX model ({err}); set weights.speech to "
                               f"silero-vad's silero_vad.onnx or to null") from None
        names = {i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()}
        if names != ({"input", "state", "sr"}, {"output", "stateN"}):
            raise WeightsError(f"speech: {path} has inputs {sorted(names[0])} and outputs {sorted(names[1])}, not "
                               f"silero-vad's streaming model's (input, state, sr -> output, stateN); set "
                               f"weights.speech to silero_vad.onnx (not the sequence or half-precision export)")
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros(STATE_SHAPE, np.float32)
        # the model's input (1, context + chunk): the previous chunk's last samples, then the chunk
        self.x = np.zeros((1, self.context_size + self.chunk), np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        self.x[0, :self.context_size] = self.x[0, -self.context_size:]  # zeros before the first chunk
        self.x[0, self.context_size:] = chunk
        out, self.state = self.session.run(None, {"input": self.x, "state": self.state, "sr": self.sr})
        return float(out[0, 0])

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """(ceil(S / chunk),) float32: the probability of each chunk of ``samples`` (S,), the
        last one zero-padded, continuing the stream (``reset`` first for a new recording)."""
        samples = np.asarray(samples, np.float32)
        n = -(-len(samples) // self.chunk)
        padded = np.zeros(n * self.chunk, np.float32)
        padded[:len(samples)] = samples
        return np.array([self(c) for c in padded.reshape(n, self.chunk)], np.float32)


def chunk_range(frame_cols: np.ndarray, wav_frames: int, chunk: int) -> tuple[int, int]:
    """[lo, hi): the chunks the stream runs through: from the first chunk a frame needs (or
    the WAV's first) to the last one needed (or the WAV's last, zero-padded)."""
    lo = min(0, int(frame_cols.min())) if len(frame_cols) else 0
    hi = max(-(-wav_frames // chunk), int(frame_cols.max()) + 1 if len(frame_cols) else 0)
    return lo, hi


def compute_speech(wav_path: str, meta: dict, params: SpeechParams, vad: SileroVad,
                   block_chunks: int = BLOCK_CHUNKS) -> tuple[np.ndarray, dict]:
    """(T, 1) speech probabilities on the frame clock of ``meta`` and facts for the
    attributes; the WAV is read ``block_chunks`` chunks at a time, the stream running on."""
    times = np.asarray(meta["frame_times"], dtype=np.float64) - float(meta["audio_start_s"])
    if not len(times):
        return np.zeros((0, 1), np.float32), {"chunks": 0, "first_chunk": 0}
    start_s, stop_s = frame_spans(times, meta.get("video_fps"))
    fw = frame_weights(start_s, stop_s, params.chunk, params.chunk, params.sample_rate)
    with sf.SoundFile(wav_path) as wav:
        if wav.samplerate != params.sample_rate:
            raise ValueError(f"{wav_path}: sample rate {wav.samplerate}, the speech stream expects "
                             f"{params.sample_rate} (media.sample_rate); re-extract the audio")
        lo, hi = chunk_range(fw.cols, wav.frames, params.chunk)
        probs = np.empty(hi - lo, np.float32)
        vad.reset()
        progress = Progress(f"speech of {wav_path}", hi - lo, "chunks")
        for first in range(lo, hi, block_chunks):
            stop = min(first + block_chunks, hi)
            audio = read_audio_segment(wav, first * params.chunk, stop * params.chunk)
            probs[first - lo:stop - lo] = vad.probabilities(audio)
            progress.update(stop - lo)
    rows, cols, weights = fw.rows(0, len(times))
    values = np.bincount(rows, weights * probs[cols - lo], minlength=len(times))
    return values[:, None].astype(np.float32), {"chunks": hi - lo, "first_chunk": lo}


def extract_speech(wav_path: str, meta: dict, out_path: str, params: SpeechParams, *, weights: str | None = None,
                   threads: int = 1) -> None:
    """Write ``out_path``: (T, 1) silero-vad speech probabilities on the video's frame clock."""
    path = model_path(weights)
    vad = SileroVad(path, params.sample_rate, threads)
    features, facts = compute_speech(wav_path, meta, params, vad)
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    described = {**params.as_dict(), "chunk_samples": params.chunk, "context_samples": params.context,
                 "runtime": "onnxruntime CPU", "state": "one stream, never reset, from the first chunk needed",
                 "clock": f"overlap-weighted mean of the {1000 * params.chunk / params.sample_rate:g} ms chunks' "
                          f"probabilities over each video frame's span (half-way to its neighbours)",
                 "past_audio": "zero-padded (silence), the model runs through it"}
    attrs = provenance("speech", described, weights_info(path), torch.device("cpu"))
    attrs.update({"audio_missing": bool(meta["audio_missing"]), "columns": "speech_probability", **facts})
    with FeatureFile(out_path, times, 1, attrs) as out:
        out.write(0, features)
    log.info("speech: %d frames from %d chunks -> %s", len(times), facts["chunks"], out_path)


def extract(job) -> None:
    """The ``speech`` stream's extractor (``vafusion.features.registry``)."""
    extract_speech(job.wav, job.meta, job.output, SpeechParams(**job.settings), weights=job.weights.get("speech"),
                   threads=job.threads)
