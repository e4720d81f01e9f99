"""Feature-stage benchmark (`make bench`): prints measured figures, asserts nothing.

Sections (all by default, or pick with --only):
  throughput  IResNet-50 faces/s and GFLOP/s against this process's dense-matmul GFLOP/s;
              VGGish examples/s; MFCC real-time factor
  e2e         end-to-end feature extraction (WAV, faces, MFCC, VGGish, IResNet-50) of a
              60 s, 30 fps video built from GRID clips: real-time factor
  rss         peak RSS of each extraction job on 1, 5 and 10-minute videos (30 fps),
              each job in its own process as Snakemake runs it
  faces       the face cache (faces/{trial}.h5, one JPEG per frame) on the demo dataset:
              bytes per frame against raw pixels and the source JPEGs; size and error of
              JPEG settings on warped GRID faces; faces/s one CPU core decodes (cv2, PIL,
              torchvision) and the threads that would feed a GPU at 10,000 faces/s
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.dataset import discover  # noqa: E402
from vafusion.faces import (  # noqa: E402
    JPEG_PARAMS, FaceDetector, FaceJpegs, align_trial_faces, decode_faces, pick_face, warp_face)
from vafusion.features.iresnet import build_iresnet50, embed_faces  # noqa: E402
from vafusion.video import iter_frames  # noqa: E402
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


def demo_dataset(path: Path | None, tmp: Path) -> Path:
    """The demo dataset: ``path``, else resources/demo (make demo), else built into ``tmp``."""
    for candidate in (path, REPO / "resources" / "demo"):
        if candidate is not None and candidate.is_dir():
            return candidate
    from vafusion.demo import build_demo_dataset

    print("(no resources/demo: building the demo dataset, a few minutes)", flush=True)
    build_demo_dataset(tmp / "demo", REPO / "data" / "grid")
    return tmp / "demo"


def raw_layout_bytes(path: Path, faces: np.ndarray, times: np.ndarray, found: np.ndarray) -> int:
    """Size of a faces file in the layout the JPEGs replaced: T x 112 x 112 x 3 uint8 pixels
    in chunks of 32 frames, with the same timestamps and mask."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("faces", data=faces, chunks=(min(32, len(faces)), *faces.shape[1:]))
        h5.create_dataset("timestamps", data=times, chunks=(min(1024, len(times)),), maxshape=(None,))
        h5.create_dataset("face_found", data=found, chunks=(min(1024, len(found)),), maxshape=(None,))
    return path.stat().st_size


def bench_face_sizes(dataset: Path, work: Path) -> list[np.ndarray]:
    """Bytes per frame of the face cache by kind; returns every JPEG stored (for decoding)."""
    ds = discover({"videos": str(dataset / "videos"),
                   "annotations": {part: str(dataset / "annotations" / part) for part in ("train", "validation")},
                   "cropped_aligned": str(dataset / "cropped_aligned"),
                   "test_trials": str(dataset / "test_trials.txt")})
    fields = ("trials", "frames", "raw", "file", "jpeg", "src", "src_files")
    totals: dict[str, dict[str, float]] = {}
    stored: list[np.ndarray] = []
    for name, trial in ds.trials.items():
        kinds = {"detected": None}  # every trial's faces detected, its cropped_aligned folder ignored
        if trial.cropped_aligned is not None:
            kinds["cropped_aligned"] = trial.cropped_aligned
        for kind, folder in kinds.items():
            out = work / f"{kind}-{name}.h5"
            align_trial_faces(ds.videos[trial.video], out, trial=name, side=trial.side, cropped_aligned=folder)
            with h5py.File(out) as h5:
                faces, times, found = FaceJpegs(h5)[:], h5["timestamps"][:], h5["face_found"][:]
                distinct = h5["jpegs"].shape[0]
            sources = sorted(folder.glob("*.jpg")) if folder else []
            t = totals.setdefault(kind, dict.fromkeys(fields, 0))
            t["trials"] += 1
            t["frames"] += len(faces)
            t["raw"] += raw_layout_bytes(work / "raw.h5", decode_faces(faces), times, found)
            t["file"] += out.stat().st_size
            t["jpeg"] += distinct
            t["src"] += sum(p.stat().st_size for p in sources)
            t["src_files"] += len(sources)
            stored.extend(f for f, hit in zip(faces, found) if hit)
    print("| faces | trials | frames | raw uint8 file | JPEG file | its distinct JPEGs | source JPEGs | source JPEGs per file |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, t in totals.items():
        per_frame = {key: f"{t[key] / t['frames']:.0f}" for key in ("raw", "file", "jpeg", "src")}
        per_file = f"{t['src'] / t['src_files']:.0f}" if t["src_files"] else "-"
        if not t["src_files"]:
            per_frame["src"] = "-"
        print(f"| {kind} | {t['trials']} | {t['frames']} | {per_frame['raw']} | {per_frame['file']} | "
              f"{per_frame['jpeg']} | {per_frame['src']} | {per_file} |")
    print("(bytes per frame of the trials; 'detected' runs the detector on every demo trial, its cropped_aligned "
          "folder ignored; a frame without a face points to a neighbour's JPEG; 'JPEG file' includes the per-frame "
          "index and HDF5's overhead, about 8 KB per file)")
    return stored


def warped_grid_faces(every: int = 5) -> np.ndarray:
    """Aligned faces (raw RGB pixels) of every ``every``-th frame of the GRID clips."""
    detector, faces = FaceDetector(), []
    for clip in sorted((REPO / "data" / "grid").glob("*.mpg")):
        for frame in iter_frames(clip):
            if frame.index % every:
                continue
            chosen = pick_face(detector.detect(frame.rgb), None, frame.rgb.shape[1])
            if chosen is not None:
                faces.append(warp_face(frame.rgb, chosen.keypoints))
    return np.stack(faces)


def bench_jpeg_settings(faces: np.ndarray) -> None:
    """Size and error of JPEG settings on raw faces: the measurement behind JPEG_PARAMS."""
    print(f"\nJPEG settings on {len(faces)} warped GRID faces (raw {faces[0].nbytes} B each):")
    print("| chroma | quality | Huffman | bytes/face | mean abs error | 99th pct abs error |")
    print("|---|---|---|---|---|---|")
    sampling = {"4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
    for chroma, quality, optimise in (("4:2:0", 95, 0), ("4:2:0", 90, 1), ("4:2:0", 95, 1), ("4:4:4", 85, 1),
                                      ("4:4:4", 90, 1), ("4:4:4", 95, 1)):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, optimise,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling[chroma]]
        encoded = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), params)[1].ravel() for f in faces]
        error = np.abs(decode_faces(encoded).astype(np.int16) - faces)
        chosen = " (JPEG_PARAMS)" if params == JPEG_PARAMS else ""
        print(f"| {chroma} | {quality} | {'optimised' if optimise else 'standard'}{chosen} | "
              f"{np.mean([e.size for e in encoded]):.0f} | {error.mean():.2f} | {np.percentile(error, 99):.0f} |")


def bench_decoders(encoded: list[np.ndarray]) -> None:
    """Faces/s one CPU thread decodes, per decoder, and threads for 10,000 faces/s."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    tensors = [torch.from_numpy(e) for e in encoded]
    decoders = {
        "cv2.imdecode (decode_faces, the CPU path)": lambda: decode_faces(encoded),
        "PIL Image.open + convert RGB": lambda: [np.asarray(Image.open(io.BytesIO(e)).convert("RGB")) for e in encoded],
        "torchvision decode_jpeg (CPU), one by one": lambda: [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors],
        "torchvision decode_jpeg (CPU), one list": lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB),
    }
    print(f"\nDecoding {len(encoded)} cached faces (112x112 JPEG, mean {np.mean([e.size for e in encoded]):.0f} B), "
          "one thread:")
    print("| decoder | faces/s per core | threads for 10,000 faces/s |")
    print("|---|---|---|")
    for name, decode in decoders.items():
        rate = len(encoded) / best_time(decode, repeats=5)
        print(f"| {name} | {rate:.0f} | {math.ceil(10_000 / rate)} |")


def bench_faces(demo: Path | None) -> None:
    print("\n## Face cache: bytes per frame (demo dataset), JPEG settings, decoding")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stored = bench_face_sizes(demo_dataset(demo, work), work)
    bench_jpeg_settings(warped_grid_faces())
    bench_decoders(stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "e2e", "rss", "faces"), action="append")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", default="1,5,10", help="video lengths for the RSS section")
    parser.add_argument("--demo", type=Path, help="demo dataset for the faces section (default resources/demo, "
                                                  "built in a temporary folder when absent)")
    args = parser.parse_args()
    sections = args.only or ["throughput", "e2e", "rss", "faces"]
    print(f"# vafusion feature benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}")
    if "throughput" in sections:
        bench_throughput(torch.device(args.device), args.threads)
    if "e2e" in sections:
        bench_e2e(args.device)
    if "rss" in sections:
        bench_rss(args.device, tuple(int(m) for m in args.minutes.split(",")))
    if "faces" in sections:
        bench_faces(args.demo)


if __name__ == "__main__":
    main()
