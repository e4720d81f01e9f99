"""Feature-stage benchmark (`make bench`): prints measured figures, asserts nothing.

Sections (all by default, or pick with --only):
  throughput  IResNet-50 faces/s and GFLOP/s against this process's dense-matmul GFLOP/s;
              VGGish examples/s; MFCC real-time factor
  e2e         end-to-end feature extraction (WAV, faces, MFCC, VGGish, IResNet-50) of a
              60 s, 30 fps video built from GRID clips: real-time factor
  rss         peak RSS of each extraction job on 1, 5 and 10-minute videos (30 fps),
              each job in its own process as Snakemake runs it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.features.iresnet import build_iresnet50, embed_faces  # noqa: E402
from vafusion.features.mfcc import MfccParams, compute_mfcc  # noqa: E402
from vafusion.features.vggish import VGGishFrontEnd  # noqa: E402
from vafusion.models.vggish import VGGish  # noqa: E402
from vafusion.video import ffmpeg_binary  # noqa: E402
from vafusion.weights import load_weights  # noqa: E402


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass (2 x multiply-accumulates of convs and linears)."""
    macs = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * k)
        elif isinstance(module, torch.nn.Linear):
            macs.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(example)
    for h in handles:
        h.remove()
    return 2.0 * sum(macs) / example.shape[0]


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(device: torch.device) -> dict[str, float]:
    """Dense fp32 matrix-multiply GFLOP/s of this process, by backend (best of n = 2048,
    4096). On the CPU three libraries are tried, because MKL's sgemm runs far below the
    machine's peak on AMD CPUs: torch.mm (MKL), numpy (OpenBLAS), and oneDNN (the same
    GEMM expressed as a 1x1 convolution, oneDNN being what runs IResNet's convolutions)."""
    rates: dict[str, float] = {}
    for n in (2048, 4096):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        flops = 2 * n**3

        def mm():
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()

        rates["torch.mm"] = max(rates.get("torch.mm", 0), flops / best_time(mm) / 1e9)
        if device.type == "cpu":
            an, bn = a.numpy(), b.numpy()
            rates["numpy"] = max(rates.get("numpy", 0), flops / best_time(lambda: an @ bn) / 1e9)
            x = a.reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(n, n, 1, bias=False).eval()
            with torch.inference_mode():
                rates["oneDNN"] = max(rates.get("oneDNN", 0), flops / best_time(lambda: conv(x)) / 1e9)
    return rates


def bench_throughput(device: torch.device, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"\n## Throughput ({device}, {threads} threads)")
    rates = matmul_gflops(device)
    peak = max(rates.values())
    print("dense fp32 matmul: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
          + f" GFLOP/s; reference = best = {peak:.1f} GFLOP/s")

    faces = torch.randint(0, 256, (256, 112, 112, 3), dtype=torch.uint8)
    for channels_last in (False, True):
        model, _ = build_iresnet50(None, device, channels_last)
        flops = count_flops(model, torch.zeros(1, 3, 112, 112, device=device))
        batches = (8, 16, 32) if device.type == "cpu" else (64, 128, 256, 512)
        for bs in batches:
            batch = faces[:bs] if bs <= 256 else faces.repeat(bs // 256, 1, 1, 1)

            def run():
                with torch.inference_mode():
                    embed_faces(model, batch, device, channels_last)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            rate = bs / best_time(run, repeats=2 if device.type == "cpu" else 5)
            achieved = rate * flops / 1e9
            mode = "bf16 autocast" if device.type == "cuda" else "fp32"
            print(f"IResNet-50 {mode} channels_last={channels_last} batch={bs}: {rate:.1f} faces/s, "
                  f"{achieved:.1f} GFLOP/s = {achieved / peak:.2f} x matmul ({flops / 1e9:.2f} GFLOP/face)")

    vggish = VGGish().eval().to(device)
    load_weights(vggish, None, what="vggish")
    examples = torch.randn(64, 1, 96, 64, device=device)

    def run_vggish():
        with torch.inference_mode():
            vggish(examples)

    print(f"VGGish network, batch 64: {64 / best_time(run_vggish):.1f} examples/s "
          f"({count_flops(vggish, examples[:1]) / 1e9:.2f} GFLOP/example)")
    front = VGGishFrontEnd(device)
    audio = torch.randn(16000 * 60, device=device) * 0.1
    print(f"VGGish log-mel front end: {60 / best_time(lambda: front.log_mel(audio)):.0f} x real time")

    with tempfile.TemporaryDirectory() as tmp:
        import soundfile as sf

        wav = Path(tmp) / "a.wav"
        sf.write(wav, np.random.default_rng(0).standard_normal(16000 * 60) * 0.1, 16000, subtype="PCM_16")
        times = np.arange(60 * 30) / 30
        elapsed = best_time(lambda: compute_mfcc(str(wav), times, 0.0, MfccParams()))
        print(f"MFCC (60 s of audio, 30 fps clock): {elapsed * 1000:.0f} ms, real-time factor {elapsed / 60:.5f}")


def make_video(path: Path, seconds: int, fps: int = 30) -> Path:
    """A talking-face video of any length: GRID clips looped, re-timed to ``fps``."""
    clip = REPO / "data" / "grid" / "bbaf2n.mpg"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(clip),
                    "-t", str(seconds), "-r", str(fps), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                    "-c:a", "aac", str(path)], check=True)
    return path


JOB = r"""
import sys
sys.path.insert(0, {src!r})
d, stage, video, device = {work!r}, {stage!r}, {video!r}, {device!r}
# each stage imports only what its Snakemake job imports
if stage == "audio":
    from vafusion.audio import extract_audio
    extract_audio(video, d + "/a.wav", d + "/a.json")
elif stage == "faces":
    from vafusion.faces import align_trial_faces
    align_trial_faces(video, d + "/faces.h5", trial="bench", cropped_aligned=None)
elif stage == "mfcc":
    from vafusion.audio import read_audio_meta
    from vafusion.features.mfcc import MfccParams, extract_mfcc
    extract_mfcc(d + "/a.wav", read_audio_meta(d + "/a.json"), d + "/mfcc.h5", MfccParams())
elif stage == "vggish":
    from vafusion.audio import read_audio_meta
    from vafusion.features.vggish import VggishParams, extract_vggish
    extract_vggish(d + "/a.wav", read_audio_meta(d + "/a.json"), d + "/vggish.h5", VggishParams(),
                   weights=None, device=device, threads=2)
elif stage == "iresnet50":
    from vafusion.features.iresnet import IresnetParams, extract_iresnet50
    extract_iresnet50(d + "/faces.h5", d + "/iresnet50.h5", IresnetParams(batch_size=16), weights=None,
                      device=device, threads=2)
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited
# across fork and exec)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""
STAGES = ("audio", "faces", "mfcc", "vggish", "iresnet50")


def run_stage(stage: str, video: Path, work: Path, device: str) -> tuple[float, float]:
    """Run one extraction job in a fresh process; return (seconds, peak RSS in MiB)."""
    code = JOB.format(src=str(REPO / "src"), work=str(work), stage=stage, video=str(video), device=device)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed on {video}:\n{proc.stderr[-2000:]}")
    return elapsed, int(proc.stdout.split()[-1]) / 1024  # VmHWM is in KiB


def bench_e2e(device: str) -> None:
    print("\n## End to end: a 60 s, 30 fps video (1800 frames), each job in its own process")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_video(work / "v.mp4", 60)
        total = 0.0
        for stage in STAGES:
            elapsed, rss = run_stage(stage, video, work, device)
            total += elapsed
            print(f"{stage:10s} {elapsed:7.1f} s  (real-time factor {elapsed / 60:.3f}, peak RSS {rss:.0f} MiB)")
        print(f"{'total':10s} {total:7.1f} s  (real-time factor {total / 60:.2f})")


def bench_rss(device: str, minutes: tuple[int, ...]) -> None:
    print("\n## Peak RSS (MiB) per extraction job, by video length (30 fps)")
    print("| minutes | frames | " + " | ".join(STAGES) + " | slowest job |")
    print("|---|---|" + "---|" * len(STAGES) + "---|")
    for m in minutes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            video = make_video(work / "v.mp4", m * 60)
            results = {stage: run_stage(stage, video, work, device) for stage in STAGES}
            frames = json.loads((work / "a.json").read_text())["n_frames"]
            slowest = max(results, key=lambda s: results[s][0])
            print(f"| {m} | {frames} | " + " | ".join(f"{results[s][1]:.0f}" for s in STAGES)
                  + f" | {slowest} {results[slowest][0]:.0f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "e2e", "rss"), action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", default="1,5,10", help="video lengths for the RSS section")
    args = parser.parse_args()
    sections = args.only or ["throughput", "e2e", "rss"]
    print(f"# vafusion feature benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}")
    if "throughput" in sections:
        bench_throughput(torch.device(args.device), args.threads)
    if "e2e" in sections:
        bench_e2e(args.device)
    if "rss" in sections:
        bench_rss(args.device, tuple(int(m) for m in args.minutes.split(",")))


if __name__ == "__main__":
    main()
