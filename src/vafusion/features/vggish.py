"""VGGish embeddings, one 128-d vector per video frame.

The front end is VGGish's own: 16 kHz audio, 25 ms windows (400 samples) every 10 ms
(160 samples), a 512-point FFT of the periodic-Hann-windowed frame, its magnitude, 64
mel bands spaced evenly on the HTK mel scale between 125 and 7500 Hz (triangles linear in
mel, unnormalised, DC bin ignored), then log(mel + 0.01). An example is 96 such frames
(0.96 s of hops; 0.975 s of audio).

One example per video frame, **centred** on the frame's presentation time: the 96 STFT
frames of the global 10 ms grid whose span is centred closest to it. Audio outside the
file (before its start, after its end) is silence, so the first and last frames of a
video still get examples, and a WAV shorter than the video is padded.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch

from vafusion.devices import resolve_device
from vafusion.features.common import FeatureFile, map_blocks, provenance, read_audio_segment, set_cpu_threads
from vafusion.jobs import Progress
from vafusion.models.vggish import EMBEDDING_SIZE, VGGish, VGGishPCA
from vafusion.weights import load_weights, read_state_dict, sha256sum

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512  # next power of two above the window
N_MELS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EXAMPLE_SPAN = (EXAMPLE_FRAMES - 1) * HOP + WINDOW  # 15600 samples = 0.975 s


def hz_to_mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """(257, 64) weights from STFT magnitude bins to VGGish's mel bands."""
    bin_mel = hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1))
    edges = np.linspace(hz_to_mel(MEL_MIN_HZ), hz_to_mel(MEL_MAX_HZ), N_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin feeds no band
    return weights


class VGGishFrontEnd:
    def __init__(self, device: torch.device = torch.device("cpu")):
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.window = (0.5 - 0.5 * torch.cos(2 * np.pi * n / WINDOW)).float().to(device)  # periodic Hann
        self.mel = torch.from_numpy(vggish_mel_matrix()).float().to(device)
        self.device = device

    def log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """(S,) samples starting on the 10 ms grid -> (1 + (S - 400) // 160, 64) log-mel."""
        frames = samples.unfold(0, WINDOW, HOP)  # (F, 400), no padding
        magnitude = torch.fft.rfft(frames * self.window, n=N_FFT).abs()  # (F, 257)
        return torch.log(magnitude @ self.mel + LOG_OFFSET)


def example_starts(frame_times: np.ndarray, audio_start: float) -> np.ndarray:
    """Index (on the 10 ms STFT grid) of the first frame of each video frame's example."""
    centre = (np.asarray(frame_times) - audio_start) * SAMPLE_RATE
    return np.round((centre - EXAMPLE_SPAN / 2) / HOP).astype(np.int64)


def examples_for_block(wav: sf.SoundFile, starts: np.ndarray, front: VGGishFrontEnd) -> torch.Tensor:
    """(B,) example start indices -> (B, 1, 96, 64) log-mel examples, from one audio read."""
    first, last = int(starts.min()), int(starts.max())
    segment = read_audio_segment(wav, first * HOP, last * HOP + EXAMPLE_SPAN)
    log_mel = front.log_mel(torch.from_numpy(segment).to(front.device))  # (F, 64)
    index = torch.from_numpy(starts - first)[:, None] + torch.arange(EXAMPLE_FRAMES)[None, :]
    return log_mel[index.to(front.device)].unsqueeze(1)


@dataclass(frozen=True)
class VggishParams:
    batch_size: int = 64
    final_relu: bool = True  # torchvggish's output; False gives Google's pre-activation embedding
    pca: bool = False  # AudioSet PCA + 8-bit quantisation (needs weights.vggish_pca)

    def as_dict(self) -> dict:
        return asdict(self)


class VggishEmbedder:
    """VGGish with its weights (or a seeded random initialisation) and, with ``pca``, the
    AudioSet PCA: log-mel examples (B, 1, 96, 64) in, embeddings (B, 128) out."""

    def __init__(self, params: VggishParams, *, weights: str | None, pca_weights: str | None = None,
                 device: torch.device = torch.device("cpu"), seed: int = 0):
        self.model = VGGish(final_relu=params.final_relu)
        self.weights_info = load_weights(self.model, weights, what="vggish", seed=seed)
        self.postprocess = None
        if params.pca:
            if pca_weights is None:
                raise ValueError("features.vggish.pca is on but weights.vggish_pca is null: the PCA needs AudioSet's "
                                 "parameters")
            self.postprocess = VGGishPCA()
            state = read_state_dict(pca_weights, "vggish_pca")
            self.postprocess.load_state_dict({k: v.reshape(self.postprocess.state_dict()[k].shape).float()
                                              for k, v in state.items()}, strict=True)
            self.weights_info["pca_weights"] = str(pca_weights)
            self.weights_info["pca_weights_sha256"] = sha256sum(pca_weights)
            self.postprocess.to(device)
        self.model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, examples: torch.Tensor) -> np.ndarray:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            embedding = self.model(examples.to(self.device))
            if self.postprocess is not None:
                embedding = self.postprocess(embedding)
        return embedding.float().cpu().numpy()


def extract_vggish(wav_path: str, meta: dict, out_path: str, params: VggishParams, *,
                   weights: str | None, pca_weights: str | None = None, device: str = "auto",
                   threads: int = 1, seed: int = 0) -> None:
    """Write ``out_path``: (T, 128) VGGish embeddings on the video's frame clock."""
    dev = resolve_device(device)
    set_cpu_threads(threads)
    embed = VggishEmbedder(params, weights=weights, pca_weights=pca_weights, device=dev, seed=seed)
    front = VGGishFrontEnd(dev)
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    starts = example_starts(times, meta["audio_start_s"])
    attrs = provenance("vggish", {**params.as_dict(), "example": "centred on frame time",
                                  "sample_rate": SAMPLE_RATE}, embed.weights_info, dev)
    attrs["audio_missing"] = bool(meta["audio_missing"])
    with sf.SoundFile(wav_path) as wav, FeatureFile(out_path, times, EMBEDDING_SIZE, attrs) as out:
        if wav.samplerate != SAMPLE_RATE:
            raise ValueError(f"{wav_path}: sample rate {wav.samplerate}, VGGish needs {SAMPLE_RATE}")
        progress = Progress(f"vggish of {wav_path}", len(starts))
        for start, examples in map_blocks(len(starts), params.batch_size,
                                          lambda lo, hi: examples_for_block(wav, starts[lo:hi], front)):
            embedding = embed(examples)
            out.write(start, embedding)
            progress.update(start + len(embedding))
    log.info("vggish: %d frames -> %s (%s)", len(times), out_path, embed.weights_info["weights"])


def extract(job) -> None:
    """The ``vggish`` stream's extractor (``vafusion.features.registry``)."""
    extract_vggish(job.wav, job.meta, job.output, VggishParams(**job.settings), weights=job.weights.get("vggish"),
                   pca_weights=job.weights.get("vggish_pca"), device=job.device, threads=job.threads, seed=job.seed)


def zero_input_row(job) -> np.ndarray:
    """(128,) what VGGish gives for an all-zero log-mel example (the missing-audio ``zeros``
    fill: zeros at the network's input), with the stream's settings and weights."""
    embed = VggishEmbedder(VggishParams(**job.settings), weights=job.weights.get("vggish"),
                           pca_weights=job.weights.get("vggish_pca"), device=resolve_device(job.device), seed=job.seed)
    return embed(torch.zeros(1, 1, EXAMPLE_FRAMES, N_MELS))[0]
