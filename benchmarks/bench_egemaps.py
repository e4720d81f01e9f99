"""eGeMAPSv02 benchmark: prints measured figures, asserts nothing.

Sections (all by default, or pick with --only):
  speed     openSMILE called once per 1-s window (as RJCMA's preprocessing does) against
            vafusion.features.egemaps (one pass per chunk): seconds per video frame and the
            speed-up, on the GRID clips (3 s each) and on a long video made of them
  accuracy  the one-pass functionals against openSMILE's per-window output, per functional
            group: |difference| / the functional's std across windows (median, 95th
            percentile, share above 1 std, max), on the GRID clips at 25 fps (windows on the
            10 ms LLD grid) and 29.97 fps (windows snapped by up to 5 ms), next to
            openSMILE's own change when its window moves by up to 5 ms

Timings are the best of --repeats runs, wall clock and the CPU time of this process (the
steadier figure on a shared machine; with threads it adds up the threads' time).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import opensmile  # noqa: E402

from vafusion.audio import extract_audio  # noqa: E402
from vafusion.features import egemaps  # noqa: E402
from vafusion.features.registry import ExtractJob  # noqa: E402
from vafusion.video import ffmpeg_binary  # noqa: E402

SR = 16000
SETTINGS = {"egemaps": {"window_s": 1.0, "chunk_s": 60.0, "context_s": 1.0},
            "egemaps_lld": {"chunk_s": 60.0, "context_s": 1.0}}


def best(fn, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s) of the fastest of ``repeats`` calls."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def cut(signal: np.ndarray, start: int, length: int = SR) -> np.ndarray:
    """``length`` samples from ``start``, zero-padded outside the signal."""
    out = np.zeros(length, np.float32)
    piece = signal[max(start, 0):start + length]
    out[max(-start, 0):max(-start, 0) + len(piece)] = piece
    return out


def grid_clips(work: Path) -> list[tuple[str, dict, np.ndarray]]:
    clips = []
    for video in sorted((REPO / "data" / "grid").glob("*.mpg")):
        meta = extract_audio(video, work / f"{video.stem}.wav", work / f"{video.stem}.json")
        clips.append((str(work / f"{video.stem}.wav"), meta, sf.read(work / f"{video.stem}.wav", dtype="float32")[0]))
    return clips


def long_video(clips, work: Path, seconds: float, fps: float) -> tuple[str, dict]:
    """A WAV of the GRID clips one after another, repeated to ``seconds``, on an ``fps`` clock."""
    signal = np.concatenate([c[2] for c in clips])
    signal = np.tile(signal, int(np.ceil(seconds * SR / len(signal))))[:int(seconds * SR)]
    path = work / f"long_{seconds:g}s.wav"
    sf.write(path, signal, SR, subtype="PCM_16")
    times = np.arange(int(seconds * fps)) / fps
    return str(path), {"frame_times": times.tolist(), "audio_start_s": 0.0, "audio_missing": False, "video_fps": fps}


def run_extractor(stream: str, wav: str, meta: dict, out: Path, threads: int) -> None:
    egemaps.extract(ExtractJob(stream=stream, output=str(out), settings={**SETTINGS[stream], "sample_rate": SR},
                               wav=wav, meta=meta, threads=threads))


def bench_speed(clips, work: Path, repeats: int, threads: int, seconds: float) -> None:
    print("\n## Speed (seconds per video frame)")
    functionals = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level="func")
    windows = [(c[2], i * 640) for c in clips for i in range(0, 75, 10)]  # frames 0, 10, .., 70 of each clip
    wall, cpu = best(lambda: [functionals.process_signal(cut(s, a), SR) for s, a in windows], repeats)
    per_window, per_window_cpu = wall / len(windows), cpu / len(windows)
    print(f"openSMILE per 1-s window, in memory (Smile reused, process_signal): {per_window * 1e3:.2f} ms/frame "
          f"(CPU {cpu / len(windows) * 1e3:.2f}) over {len(windows)} windows")
    sample = [(c[0], a / SR) for c in clips[:3] for a in (0, 19200)]
    wall_f, _ = best(lambda: [functionals.process_file(w, start=t, end=t + 1.0) for w, t in sample], repeats)
    print(f"openSMILE per 1-s window, from the WAV (process_file start/end): {wall_f / len(sample) * 1e3:.2f} ms/frame")
    # A script that cuts each window out of the video with ffmpeg first (one process a window).
    video = REPO / "data" / "grid" / f"{Path(clips[0][0]).stem}.mpg"

    def ffmpeg_windows() -> None:
        for t in (0.0, 0.8, 1.6):
            cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-ss", f"{t}", "-t", "1", "-i", str(video), "-vn",
                   "-ac", "1", "-ar", str(SR), "-f", "s16le", "-"]
            raw = subprocess.run(cmd, check=True, capture_output=True).stdout
            functionals.process_signal(np.frombuffer(raw, np.int16).astype(np.float32) / 32768, SR)

    wall_v, _ = best(ffmpeg_windows, repeats)
    print(f"openSMILE per 1-s window cut from the video by an ffmpeg process: {wall_v / 3 * 1e3:.1f} ms/frame")

    def fresh_smile_windows() -> None:  # a script that sets openSMILE up for every window (the config parsed each time)
        for signal, start in windows[:4]:
            opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level="func").process_signal(cut(signal, start), SR)

    wall_s, cpu_s = best(fresh_smile_windows, repeats)
    print(f"openSMILE per 1-s window, set up anew for each window (opensmile.Smile(...) per window): "
          f"{wall_s / 4 * 1e3:.1f} ms/frame (CPU {cpu_s / 4 * 1e3:.1f})")
    print("| stream | video | frames | threads | ms/frame (wall) | ms/frame (CPU) | speed-up vs in-memory per-window "
          "(wall / CPU) |")
    print("|---|---|---|---|---|---|---|")
    n_clip_frames = sum(len(c[1]["frame_times"]) for c in clips)
    for stream in ("egemaps", "egemaps_lld"):
        run_extractor(stream, clips[0][0], clips[0][1], work / "warm.h5", 1)  # imports, first openSMILE set-up
        wall, cpu = best(lambda: [run_extractor(stream, w, m, work / "o.h5", 1) for w, m, _ in clips], repeats)
        print(f"| {stream} | {len(clips)} GRID clips of 3 s, 25 fps | {n_clip_frames} | 1 | "
              f"{wall / n_clip_frames * 1e3:.3f} | {cpu / n_clip_frames * 1e3:.3f} | {per_window * n_clip_frames / wall:.0f}x / "
              f"{per_window_cpu * n_clip_frames / cpu:.0f}x |",
              flush=True)
        for fps in (25.0, 30.0):
            wav, meta = long_video(clips, work, seconds, fps)
            n = len(meta["frame_times"])
            for t in sorted({1, threads}):
                wall, cpu = best(lambda: run_extractor(stream, wav, meta, work / "o.h5", t), repeats)
                print(f"| {stream} | {seconds:g} s of GRID speech, {fps:g} fps | {n} | {t} | {wall / n * 1e3:.3f} | "
                      f"{cpu / n * 1e3:.3f} | {per_window * n / wall:.0f}x / {per_window_cpu * n / cpu:.0f}x |", flush=True)
    # What bounds the one pass: openSMILE's own LLD extraction of the whole audio, once.
    wav, meta = long_video(clips, work, seconds, 25.0)
    signal = sf.read(wav, dtype="float32")[0]
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level="lld")
    _, cpu = best(lambda: lld.process_signal(signal, SR), repeats)
    print(f"floor: openSMILE's LLDs of the {seconds:g} s in one call: real-time factor {cpu / seconds:.4f} (CPU), "
          f"{cpu / (seconds * 25) * 1e3:.3f} ms per 25 fps frame (speed-up bound {per_window_cpu * seconds * 25 / cpu:.0f}x)")


def deviation_table(title: str, ours: np.ndarray, ref: np.ndarray) -> None:
    d = np.abs(ours - ref) / (ref.std(axis=0) + 1e-12)
    print(f"\n{title} ({len(ref)} windows)")
    print("| group | functionals | median | 95th pct | share > 1 std | max | exact (1e-4 rel) |")
    print("|---|---|---|---|---|---|---|")
    for group, cols in egemaps.GROUPS.items():
        g = d[:, cols]
        exact = (np.abs(ours[:, cols] - ref[:, cols]) <= 1e-4 * (1 + np.abs(ref[:, cols]))).mean()
        print(f"| {group} | {g.shape[1]} | {np.median(g):.4f} | {np.quantile(g, 0.95):.4f} | {(g > 1).mean():.4f} | "
              f"{g.max():.2f} | {exact:.2f} |")


def bench_accuracy(clips, work: Path) -> None:
    print("\n## Accuracy: one pass against openSMILE called per window")
    functionals = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level="func")
    rng = np.random.default_rng(0)
    for fps, label in ((25.0, "25 fps: every window on the 10 ms grid"),
                       (30000 / 1001, "29.97 fps: windows snapped to the 10 ms grid (<= 5 ms)")):
        ours, ref, shifted = [], [], []
        for wav, meta, signal in clips:
            times = np.arange(int(round(3.0 * fps))) / fps
            clock = {**meta, "frame_times": times.tolist()}
            run_extractor("egemaps", wav, clock, work / "acc.h5", 1)
            with h5py.File(work / "acc.h5") as h5:
                rows = h5["features"][:]
            sample = np.arange(0, len(times), 4)
            starts = np.round(times[sample] * SR).astype(int)
            ours.append(rows[sample])
            ref.append(np.array([functionals.process_signal(cut(signal, s), SR).to_numpy()[0] for s in starts]))
            if fps == 25.0:  # openSMILE against itself, window moved by up to +-5 ms
                moved = starts + rng.integers(-80, 81, len(starts))
                shifted.append(np.array([functionals.process_signal(cut(signal, s), SR).to_numpy()[0] for s in moved]))
        deviation_table(f"{label}; frames 0..{len(times) - 1} of each clip, every 4th (some windows run past the audio)",
                        np.concatenate(ours), np.concatenate(ref))
        if shifted:
            deviation_table("for scale: openSMILE per window against itself with the window moved by up to 5 ms",
                            np.concatenate(shifted), np.concatenate(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("speed", "accuracy"), action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the long video of the speed section")
    args = parser.parse_args()
    sections = args.only or ["speed", "accuracy"]
    warnings.simplefilter("ignore", UserWarning)
    print(f"# vafusion eGeMAPS benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, opensmile {opensmile.__version__}; "
          f"settings {SETTINGS}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = grid_clips(work)
        if "speed" in sections:
            bench_speed(clips, work, args.repeats, args.threads, args.seconds)
        if "accuracy" in sections:
            bench_accuracy(clips, work)


if __name__ == "__main__":
    main()
