"""wav2vec 2.0, HuBERT and WavLM features: one row per video frame from a self-supervised
speech model's hidden states (the ``wav2vec2``, ``hubert`` and ``wavlm`` streams).

Why: the hidden states of speech models pretrained without labels carry paralinguistic
information (prosody, voice quality, affect) beyond hand-crafted features and VGGish; many
recent ABAW valence/arousal systems use them as their audio stream.

The network is torchaudio's (``torchaudio.models.wav2vec2_model`` / ``wavlm_model``); the
user supplies a checkpoint (``weights.<stream>``), read without running any of its code.
A missing checkpoint is an error: a randomly initialised self-supervised model gives
meaningless features, so these streams never fall back to a random network.

Checkpoints (a Hugging Face model folder or a fairseq ``.pt``) are read by
``vafusion.features.ssl_checkpoints``, without running any of their code.

Which hidden state (``layer``): ``k`` (1..N) is the output of transformer layer ``k``, as
transformers' (5.x) ``hidden_states[k]`` (tested) and torchaudio's ``extract_features``: for
pre-LayerNorm ("large") models the encoder's final LayerNorm is not applied. ``"last"`` is layer N;
``"average"`` is the mean of layers 1..N. Only the layers up to the one asked for run.

Input normalisation (``normalize``): zero mean, unit variance over each forward pass's
input, as transformers' feature extractor does with ``do_normalize``. ``auto`` takes what
the checkpoint says (``preprocessor_config.json``'s ``do_normalize``; fairseq's
``task.normalize``) and otherwise fairseq's convention: on for models with a LayerNorm
convolutional front end ("large"), off for the GroupNorm ones ("base").

Long recordings are cut into chunks of ``chunk_s`` seconds, each run with ``context_s``
seconds of audio on each side (clipped at the ends of the audio) of which the outputs are
dropped, so that the transformer sees context at every chunk edge and memory does not grow
with the recording; ``batch_size`` chunks of equal length go through the network at once.
Chunk edges lie on the 20 ms frame grid, so every chunk's frames are frames of the whole
recording's grid. What a chunk changes: the attention reaches only the chunk and its
context, and two statistics are taken over the forward pass's input rather than the whole
recording: the input normalisation's mean and variance, and the GroupNorm of "base"
models' first conv layer (per channel, over time). Chunks whose context covers the whole
recording give exactly the unchunked output (tested); a shorter context gives a close one. The WAV's last
samples that make no whole 20 ms frame are left out, as the models do. On CUDA the network
runs under bfloat16 autocast (``precision: auto``); ``bfloat16`` asks for it on the CPU
too.

Frame clock: the models emit frames every H = 320 samples (20 ms; the product of the conv
strides) with a receptive field of R = 400 samples (25 ms). Frame ``j`` (j = 0 starts at
the WAV's first sample; negative or past-the-end frames hear zeros) is centred at
``(j H + R / 2) / sr`` seconds and stands for the 20 ms cell ``[centre - H/2, centre + H/2)``,
so the cells tile time. Each video frame stands for the span from half-way to the previous
frame to half-way to the next (each half capped at half a nominal frame period
``1 / video_fps``; the first and last frames mirror their one neighbour); its row is the
mean of the cells that span overlaps, weighted by the overlap (the time average of the
piecewise-constant 50 Hz signal over the span). At 25-30 fps a frame averages 2-3 cells;
above 50 fps it takes one cell, or interpolates between two. The audio analysed is the WAV
(``audio_start_s`` places its first sample on the frame clock) extended with silence where
the video runs past it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from vafusion.devices import resolve_device
from vafusion.features.common import FeatureFile, prefetch, provenance, read_audio_segment, set_cpu_threads
from vafusion.features.ssl_checkpoints import KINDS, SslCheckpoint, conv_geometry, load_checkpoint
from vafusion.jobs import Progress
from vafusion.precision import ProbeResult, checked_bf16
from vafusion.weights import WeightsError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NORMALIZE_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor


# --- settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SslParams:
    """A stream's settings (``features.<stream>`` of the config, plus the sample rate)."""

    layer: int | str = "average"  # 1..N, "last" or "average" (of layers 1..N)
    chunk_s: float = 20.0  # audio per forward pass, context excluded
    context_s: float = 2.0  # audio on each side of a chunk the network sees, outputs dropped
    batch_size: int = 4  # chunks per forward pass
    normalize: bool | str = "auto"  # zero-mean unit-variance input: true, false or auto (the checkpoint's)
    precision: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 on CPU), float32, bfloat16
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if not (self.layer in ("last", "average") or (isinstance(self.layer, int) and not isinstance(self.layer, bool)
                                                      and self.layer >= 1)):
            raise ValueError(f"layer must be an integer >= 1, 'last' or 'average', not {self.layer!r}")
        if not self.chunk_s > 0 or not self.context_s >= 0 or self.batch_size < 1:
            raise ValueError("chunk_s must be > 0, context_s >= 0 and batch_size >= 1")
        if self.normalize not in (True, False, "auto"):
            raise ValueError(f"normalize must be true, false or auto, not {self.normalize!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, not {self.precision!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the speech models take {SAMPLE_RATE} Hz audio; media.sample_rate is {self.sample_rate}")

    def as_dict(self) -> dict:
        return asdict(self)


# --- the network on chunks ----------------------------------------------------------------

class SslEmbedder:
    """A checkpoint's model on a device: waveforms (B, S) in, the chosen layer (B, F, D) out."""

    def __init__(self, checkpoint: SslCheckpoint, params: SslParams, device: torch.device = torch.device("cpu")):
        self.checkpoint = checkpoint
        n = checkpoint.num_layers
        if isinstance(params.layer, int) and params.layer > n:
            raise ValueError(f"layer {params.layer} asked of a {n}-layer {checkpoint.kind} model ({checkpoint.source})")
        self.layer = n if params.layer == "last" else params.layer  # int or "average"
        self.layers_run = n if self.layer == "average" else self.layer
        self.normalize = (params.normalize if params.normalize != "auto" else
                          checkpoint.normalize if checkpoint.normalize is not None else checkpoint.layer_norm_front_end)
        self.bf16 = params.precision == "bfloat16" or (params.precision == "auto" and device.type == "cuda")
        self.bf16_probe: ProbeResult | None = None
        self.model = checkpoint.model.to(device).eval()
        self.device = device

    def check_bf16(self, waveform: Tensor, what: str) -> None:
        """Before bfloat16 is trusted: one probe (``waveform``, (S,), a couple of seconds of
        the job's audio) in float32 and under autocast; float32 from here on when they
        disagree (``vafusion.precision``)."""
        if not self.bf16:
            return
        x = self._input(waveform[None])
        self.bf16_probe = checked_bf16(self.model, lambda: self.model.extract_features(x, num_layers=self.layers_run)[0][-1],
                                       self.device.type, what)
        self.bf16 = self.bf16_probe.agrees

    def describe(self) -> dict:
        return {"layer": self.layer, "num_layers": self.checkpoint.num_layers, "normalize_resolved": self.normalize,
                "autocast": "bfloat16" if self.bf16 else "none (float32)", "model_kind": self.checkpoint.kind,
                **({"bf16_probe": self.bf16_probe.describe()} if self.bf16_probe is not None else {})}

    def _input(self, waveforms: Tensor) -> Tensor:
        x = waveforms.to(self.device, torch.float32)
        if self.normalize:
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, unbiased=False, keepdim=True)
                                                               + NORMALIZE_EPS)
        return x

    @torch.inference_mode()
    def __call__(self, waveforms: Tensor) -> Tensor:
        """(B, S) float32 -> (B, F, D) float32 on the CPU, F = (S - R) // H + 1."""
        x = self._input(waveforms)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            layers, _ = self.model.extract_features(x, num_layers=self.layers_run)  # [(B, F, D)] x layers_run
        if self.layer == "average":
            out = layers[0].float()
            for hidden in layers[1:]:
                out = out + hidden.float()
            out = out / len(layers)
        else:
            out = layers[self.layer - 1].float()
        return out.cpu()


@dataclass(frozen=True)
class Chunk:
    """SSL frames ``first .. stop-1`` go through the network; ``keep_start .. keep_stop-1``
    (global frame indices) are kept."""

    first: int
    keep_start: int
    keep_stop: int
    stop: int

    def samples(self, hop: int, field: int) -> tuple[int, int]:
        """The input sample range [start, stop) giving exactly frames first..stop-1."""
        return self.first * hop, (self.stop - 1) * hop + field


def plan_chunks(lo: int, hi: int, chunk_frames: int, context_frames: int) -> list[Chunk]:
    """Chunks keeping frames [lo, hi), ``chunk_frames`` each, with up to ``context_frames``
    on each side (clipped to [lo, hi))."""
    return [Chunk(max(lo, start - context_frames), start, min(start + chunk_frames, hi),
                  min(hi, start + chunk_frames + context_frames))
            for start in range(lo, hi, chunk_frames)]


def batches_of_chunks(chunks: list[Chunk], batch_size: int) -> Iterator[list[Chunk]]:
    """Consecutive chunks of equal input length, ``batch_size`` at most (the first and last
    chunks, whose context is clipped, usually go alone)."""
    batch: list[Chunk] = []
    for chunk in chunks:
        if batch and (len(batch) == batch_size or chunk.stop - chunk.first != batch[0].stop - batch[0].first):
            yield batch
            batch = []
        batch.append(chunk)
    if batch:
        yield batch


# --- the frame clock ----------------------------------------------------------------------

@dataclass(frozen=True)
class FrameWeights:
    """Video frame ``t`` = sum over k in ``indptr[t]:indptr[t+1]`` of ``weights[k]`` times
    SSL frame ``cols[k]`` (a global index: 0 starts at the WAV's first sample)."""

    indptr: np.ndarray  # (T + 1,) int64
    cols: np.ndarray  # (nnz,) int64, ascending within a row
    weights: np.ndarray  # (nnz,) float64, summing to 1 per row

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index - lo, col, weight) of the entries of rows lo..hi-1."""
        a, b = self.indptr[lo], self.indptr[hi]
        rows = np.repeat(np.arange(lo, hi), np.diff(self.indptr[lo:hi + 1])) - lo
        return rows, self.cols[a:b], self.weights[a:b]


def frame_spans(times: np.ndarray, video_fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) seconds of each frame's span: half-way to its neighbours (in time
    order), each half capped at half a nominal frame period; the ends mirror their one gap."""
    times = np.asarray(times, dtype=np.float64)
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    gaps = np.diff(ordered)
    if video_fps and video_fps > 0:
        period = 1.0 / video_fps
    else:
        period = float(np.median(gaps)) if len(gaps) else 0.04
    if len(gaps):
        before = np.concatenate([gaps[:1], gaps])  # the first frame mirrors its one gap
        after = np.concatenate([gaps, gaps[-1:]])
    else:
        before = after = np.full(1, period)
    half_before = np.minimum(before, period) / 2
    half_after = np.minimum(after, period) / 2
    start, stop = np.empty_like(times), np.empty_like(times)
    start[order], stop[order] = ordered - half_before, ordered + half_after
    return start, stop


def frame_weights(start_s: np.ndarray, stop_s: np.ndarray, hop: int, field: int,
                  sample_rate: int = SAMPLE_RATE) -> FrameWeights:
    """Overlap weights of each span [start_s, stop_s) (seconds after the WAV's first sample)
    with the SSL frames' 20 ms cells: cell j = [c_j - H/2, c_j + H/2), c_j = j H + R/2."""
    # position in cells: cell j covers u in [j, j + 1)
    a = (np.asarray(start_s, np.float64) * sample_rate - field / 2) / hop + 0.5
    b = (np.asarray(stop_s, np.float64) * sample_rate - field / 2) / hop + 0.5
    empty = b - a < 1e-9  # a zero-width span (a duplicated timestamp): the cell holding it
    b = np.where(empty, a, b)
    first = np.floor(a).astype(np.int64)
    count = np.where(empty, 1, np.maximum(np.ceil(b).astype(np.int64) - first, 1))
    indptr = np.concatenate([[0], np.cumsum(count)])
    rows = np.repeat(np.arange(len(a)), count)
    cols = first[rows] + (np.arange(indptr[-1]) - indptr[rows])
    overlap = np.minimum(b[rows], cols + 1) - np.maximum(a[rows], cols)
    weights = np.where(empty[rows], 1.0, np.clip(overlap, 0.0, None))
    totals = np.bincount(rows, weights, minlength=len(a))
    return FrameWeights(indptr, cols, weights / totals[rows])


def map_to_frames(ssl: Tensor, first_frame: int, fw: FrameWeights, lo: int, hi: int) -> Tensor:
    """(hi - lo, D) rows of video frames lo..hi-1 from ``ssl`` (F, D), whose row 0 is the
    global SSL frame ``first_frame``."""
    rows, cols, weights = fw.rows(lo, hi)
    picked = ssl[torch.from_numpy(cols - first_frame)] * torch.from_numpy(weights).to(ssl.dtype)[:, None]
    return torch.zeros(hi - lo, ssl.shape[1], dtype=ssl.dtype).index_add_(0, torch.from_numpy(rows), picked)


# --- the stream ---------------------------------------------------------------------------

def compute_ssl_features(wav_path: str, meta: dict, embed: SslEmbedder, params: SslParams,
                         out: FeatureFile | None = None, what: str = "ssl") -> np.ndarray | None:
    """(T, D) rows on the video frame clock of ``meta``, written to ``out`` block by block
    as chunks finish (returned instead when ``out`` is None)."""
    hop, field = conv_geometry(embed.model)
    times = np.asarray(meta["frame_times"], dtype=np.float64) - float(meta["audio_start_s"])
    n_frames = len(times)
    if n_frames == 0:
        return np.zeros((0, embed.checkpoint.dim), np.float32)
    start_s, stop_s = frame_spans(times, meta.get("video_fps"))
    fw = frame_weights(start_s, stop_s, hop, field, params.sample_rate)
    row_first = fw.cols[fw.indptr[:-1]]
    row_last = fw.cols[fw.indptr[1:] - 1]
    ready_after = np.maximum.accumulate(row_last)  # rows 0..t need SSL frames up to ready_after[t]
    still_needed = np.minimum.accumulate(row_first[::-1])[::-1]  # rows t.. need nothing below this
    rows_out: list[np.ndarray] = []

    with sf.SoundFile(wav_path) as wav:
        if wav.samplerate != params.sample_rate:
            raise ValueError(f"{wav_path}: sample rate {wav.samplerate}, the speech models need {params.sample_rate}")
        file_frames = (wav.frames - field) // hop + 1 if wav.frames >= field else 0
        lo, hi = min(0, int(fw.cols.min())), max(file_frames, int(fw.cols.max()) + 1)
        chunk_frames = max(1, round(params.chunk_s * params.sample_rate / hop))
        context_frames = round(params.context_s * params.sample_rate / hop)
        chunks = plan_chunks(lo, hi, chunk_frames, context_frames)

        def read(batch: list[Chunk]) -> tuple[list[Chunk], Tensor]:
            return batch, torch.from_numpy(np.stack([read_audio_segment(wav, *c.samples(hop, field)) for c in batch]))

        buffer, buffer_first = torch.zeros(0, embed.checkpoint.dim), lo  # computed SSL frames still needed
        next_row = 0
        progress = Progress(f"{what} of {wav_path}", n_frames)
        for batch, waveforms in prefetch(read(b) for b in batches_of_chunks(chunks, params.batch_size)):
            hidden = embed(waveforms)  # (B, F, D)
            kept = [hidden[i, c.keep_start - c.first:c.keep_stop - c.first] for i, c in enumerate(batch)]
            buffer = torch.cat([buffer, *kept])
            done = batch[-1].keep_stop  # SSL frames < done are computed
            stop_row = int(np.searchsorted(ready_after, done, side="left"))  # rows whose frames are all < done
            if stop_row > next_row:
                rows = map_to_frames(buffer, buffer_first, fw, next_row, stop_row).numpy()
                if out is not None:
                    out.write(next_row, rows)
                else:
                    rows_out.append(rows)
                next_row = stop_row
                progress.update(next_row)
                if next_row < n_frames:  # drop frames no later row needs
                    drop = min(int(still_needed[next_row]) - buffer_first, len(buffer))
                    if drop > 0:
                        buffer, buffer_first = buffer[drop:], buffer_first + drop
    if next_row != n_frames:
        raise RuntimeError(f"{what}: {n_frames - next_row} video frames were left without SSL frames (a bug)")
    return None if out is not None else np.concatenate(rows_out).astype(np.float32)


PROBE_S = 2.0  # seconds of the job's audio in the bfloat16 probe


def probe_waveform(wav_path: str, sample_rate: int, field: int) -> Tensor:
    """The first ``PROBE_S`` seconds of the WAV (seeded noise where it is shorter than one
    receptive field or silent: an all-zero input would compare nothing)."""
    with sf.SoundFile(wav_path) as wav:
        x = wav.read(min(wav.frames, int(PROBE_S * sample_rate)), dtype="float32", always_2d=True).mean(axis=1)
    if len(x) < field or not np.any(x):
        x = np.random.default_rng(0).standard_normal(int(PROBE_S * sample_rate)).astype(np.float32) * 0.1
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def extract_ssl(stream: str, wav_path: str, meta: dict, out_path: str, params: SslParams, *, weights: str | None,
                device: str = "auto", threads: int = 1) -> None:
    """Write ``out_path``: (T, D) hidden states of the ``stream`` model on the video's frame clock."""
    if weights is None:
        raise WeightsError(
            f"{stream}: weights.{stream} is not set. This stream needs a pretrained {stream} checkpoint (a Hugging "
            f"Face model folder with config.json, or a fairseq .pt); a randomly initialised self-supervised model "
            f"gives meaningless features, so it does not run without one. Set weights.{stream} in the config or "
            f"leave '{stream}' out of learning.streams.")
    dev = resolve_device(device)
    set_cpu_threads(threads)
    checkpoint = load_checkpoint(weights, stream)
    embed = SslEmbedder(checkpoint, params, dev)
    hop, field = conv_geometry(checkpoint.model)
    embed.check_bf16(probe_waveform(wav_path, params.sample_rate, field), f"{stream} of {wav_path}")
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    clock = (f"overlap-weighted mean of the {1000 * hop / params.sample_rate:g} ms SSL frames' cells over each video "
             f"frame's span (half-way to its neighbours)")
    attrs = provenance(stream, {**params.as_dict(), **embed.describe(), "hop_samples": hop,
                                "receptive_field_samples": field, "clock": clock}, checkpoint.weights_info(), dev)
    attrs["audio_missing"] = bool(meta["audio_missing"])
    with FeatureFile(out_path, times, checkpoint.dim, attrs) as out:
        compute_ssl_features(wav_path, meta, embed, params, out, what=stream)
    log.info("%s: %d frames -> %s (%s, layer %s)", stream, len(times), out_path, checkpoint.source, embed.layer)


def extract(job) -> None:
    """The ``wav2vec2``, ``hubert`` and ``wavlm`` streams' extractor (``vafusion.features.registry``)."""
    if job.stream not in KINDS:
        raise ValueError(f"vafusion.features.ssl extracts {', '.join(KINDS)}, not '{job.stream}'")
    extract_ssl(job.stream, job.wav, job.meta, job.output, SslParams(**job.settings),
                weights=job.weights.get(job.stream), device=job.device, threads=job.threads)
