"""Self-supervised speech streams benchmark (wav2vec2, hubert, wavlm): prints measured
figures, asserts nothing.

The networks are torchaudio's architectures with random weights (compute and memory do
not depend on the weights' values, so no checkpoint is needed); they run through the
stream's own chunked path (``vafusion.features.ssl.compute_ssl_features``: the WAV read
in chunks, the forward passes, the frame-clock mapping) on a WAV of speech-like noise
with a 25 fps frame clock, at the stream's default settings unless said.

Sections (all by default, or pick with --only):
  rate  CPU seconds (process time, all threads) and wall seconds per second of audio:
        wav2vec2 base (= HuBERT base: 7 conv + 12 x 768) and WavLM base, float32 and CPU
        bfloat16 autocast, all layers ("average") and layer 6; with --large the large
        models (24 x 1024) too. On a shared machine the wall time includes waiting for a
        core: the CPU seconds are the figure to use.
  rss   peak RSS of one extraction job in its own process: a state dict of the model's
        size read from disk into the model (what loading a checkpoint holds at its peak),
        then the chunked forward of a WAV long enough for a full batch of chunks.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.features.ssl import SslEmbedder, SslParams, compute_ssl_features  # noqa: E402
from vafusion.features.ssl_checkpoints import SslCheckpoint, random_architecture  # noqa: E402

SR = 16000
FPS = 25.0


def write_wav(path: Path, seconds: float) -> Path:
    """Noise shaped by a slow envelope: the network's cost does not depend on content."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.1 * rng.standard_normal(len(t)) * (1.2 + np.sin(2 * np.pi * 0.7 * t)), SR, subtype="PCM_16")
    return path


def checkpoint_of(kind: str, size: str) -> SslCheckpoint:
    model = random_architecture(kind, size)
    return SslCheckpoint(model, kind, f"random {kind} {size} (benchmark)", "", normalize=False)


def measure(kind: str, size: str, params: SslParams, wav: Path, seconds: float,
            repeats: int = 2) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per second of audio of compute_ssl_features, the run
    with the fewest CPU seconds of ``repeats``."""
    embed = SslEmbedder(checkpoint_of(kind, size), params)
    meta = {"frame_times": list(np.arange(int(seconds * FPS)) / FPS), "audio_start_s": 0.0, "video_fps": FPS,
            "audio_missing": False}
    compute_ssl_features(str(wav), {**meta, "frame_times": meta["frame_times"][:25]}, embed, params)  # warm-up
    runs = []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        compute_ssl_features(str(wav), meta, embed, params)
        runs.append(((time.process_time() - cpu) / seconds, (time.perf_counter() - wall) / seconds))
    return min(runs)


def bench_rate(threads: int, seconds: float, sizes: tuple[str, ...]) -> None:
    torch.set_num_threads(threads)
    print(f"\n## Rate: seconds per second of audio ({seconds:g} s WAV, {threads} threads, chunk_s 20, context_s 2)")
    print("| model | precision | layer | CPU s / audio s | wall s / audio s | load average (1 min) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "a.wav", seconds)
        for size in sizes:
            for kind in ("wav2vec2", "wavlm"):
                for precision, layer in (("float32", "average"), ("float32", 6), ("bfloat16", "average")):
                    params = SslParams(layer=layer, precision=precision, batch_size=1)
                    cpu, wall = measure(kind, size, params, wav, seconds)
                    print(f"| {kind} {size} | {precision} | {layer} | {cpu:.3f} | {wall:.3f} | "
                          f"{os.getloadavg()[0]:.1f} |", flush=True)
    print("(wav2vec2 stands for HuBERT too: the same architecture; 'bfloat16' is CPU autocast, which pays only "
          "on CPUs with bfloat16 instructions, e.g. AVX512-BF16; batch_size 1)")


JOB = r"""
import sys, numpy as np, torch
sys.path.insert(0, {src!r})
from vafusion.features.ssl import SslEmbedder, SslParams, compute_ssl_features
from vafusion.features.ssl_checkpoints import SslCheckpoint, random_architecture
torch.set_num_threads({threads})
model = random_architecture({kind!r}, {size!r})
model.load_state_dict(torch.load({state!r}, map_location="cpu", weights_only=True))  # file + model, as a load
params = SslParams(batch_size={batch_size})
embed = SslEmbedder(SslCheckpoint(model, {kind!r}, "bench", "", False), params)
meta = {{"frame_times": list(np.arange(int({seconds} * 25)) / 25), "audio_start_s": 0.0, "video_fps": 25.0,
        "audio_missing": False}}
compute_ssl_features({wav!r}, meta, embed, params)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def bench_rss(threads: int, sizes: tuple[str, ...], batch_sizes: tuple[int, ...]) -> None:
    seconds = 150.0  # chunks of 20 s: 1 + 4 + 2 + 1, so a batch of 4 equal chunks (24 s each) forms
    print(f"\n## Peak RSS of one job (MiB): load + chunked forward of a {seconds:g} s WAV, chunk_s 20, context_s 2")
    print("| model | weights MiB | " + " | ".join(f"batch_size {b}" for b in batch_sizes) + " |")
    print("|---|---|" + "---|" * len(batch_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "a.wav", seconds)
        for size in sizes:
            for kind in ("wav2vec2", "wavlm"):
                state_path = Path(tmp) / "state.pt"
                torch.save(random_architecture(kind, size).state_dict(), state_path)
                row = []
                for batch_size in batch_sizes:
                    code = JOB.format(src=str(REPO / "src"), threads=threads, kind=kind, size=size,
                                      state=str(state_path), batch_size=batch_size, seconds=seconds, wav=str(wav))
                    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise RuntimeError(f"{kind} {size} failed:\n{proc.stderr[-2000:]}")
                    row.append(f"{int(proc.stdout.split()[-1]) / 1024:.0f}")  # VmHWM is in KiB
                print(f"| {kind} {size} | {state_path.stat().st_size / 2**20:.0f} | " + " | ".join(row) + " |",
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("rate", "rss"), action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="WAV length for the rate section")
    parser.add_argument("--large", action="store_true", help="the large models too (slow: about 3x base)")
    parser.add_argument("--batch-sizes", default="1,4", help="batch sizes for the RSS section")
    args = parser.parse_args()
    sections = args.only or ["rate", "rss"]
    sizes = ("base", "large") if args.large else ("base",)
    print(f"# vafusion SSL speech-model benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    if "rate" in sections:
        bench_rate(args.threads, args.seconds, sizes)
    if "rss" in sections:
        bench_rss(args.threads, sizes, tuple(int(b) for b in args.batch_sizes.split(",")))


if __name__ == "__main__":
    main()
