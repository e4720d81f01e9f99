"""Training at Aff-Wild2 scale on one machine: peak memory and speed of a `train_model` job.

Synthetic aligned trials (the layout `align_trial` writes, random features and labels) at
1/8, 1/4 and 1/2 of Aff-Wild2's VA set (594 trials, ~2.03 M annotated frames in train +
validation); each scale trains one fold for one epoch in a fresh process, validation and
the missing-audio test included, and reports that process's peak RSS (from the kernel) and
its training windows/s. A line through the three points projects the full size.

    python benchmarks/bench_scale.py [--scales 0.125 0.25 0.5] [--model jca] [--keep DIR]
    python benchmarks/bench_scale.py --src OTHER_CHECKOUT/src   # the same on other code

Figures are measured on this machine each run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.learning.align import write_aligned  # noqa: E402

AFFWILD2_TRIALS = 594
AFFWILD2_FRAMES = 2_030_000  # annotated frames, train + validation (VA set)
DIMS = {"iresnet50": 512, "vggish": 128, "mfcc": 39}


def make_dataset(folder: Path, scale: float, seed: int = 0) -> dict[str, Path]:
    """Aligned trials with Aff-Wild2's mean length, lengths spread 0.3x..1.7x."""
    rng = np.random.default_rng(seed)
    n_trials = max(6, round(AFFWILD2_TRIALS * scale))
    mean_length = AFFWILD2_FRAMES / AFFWILD2_TRIALS
    lengths = np.maximum(100, (mean_length * rng.uniform(0.3, 1.7, n_trials)).astype(int))
    paths = {}
    for i, length in enumerate(lengths):
        name = f"trial{i:04d}"
        streams = {s: rng.standard_normal((length, d), dtype=np.float32) for s, d in DIMS.items()}
        # slowly varying labels, a few unannotated (-5) frames
        values = {t: np.clip(np.cumsum(rng.normal(0, 0.02, length)), -1, 1).astype(np.float32)
                  for t in ("valence", "arousal")}
        for v in values.values():
            v[rng.random(length) < 0.02] = -5
        paths[name] = folder / f"{name}.h5"
        write_aligned(paths[name], streams, values, np.ones(length, bool),
                      {"trial": name, "partition": "train", "fps": 30.0, "audio_missing": False,
                       "n_video_frames": int(length), "n_frames": int(length)})
    return paths


CHILD = """
import json, sys
sys.path.insert(0, {src!r})
import numpy as np
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold
job = json.load(open({job!r}))
silence = {{k: np.zeros(d, np.float32) for k, d in job["dims"].items()}}
metrics = train_fold(job["model"], job["hparams"], job["fold"], job["aligned"], job["out"],
                     TrainConfig.from_dict({{**job["train"], "selection": "validation"}}, seed=0),  # one fold, no train_groups
                     audio_fill=silence, device="cpu", threads=1)
print(json.dumps({{"windows_per_s": metrics["windows_per_s"]}}))
"""


def train_once(src: Path, paths: dict[str, Path], model: str, work: Path) -> dict:
    """One fold, one epoch in a child process; its peak RSS from wait4()."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    section = "tcn_transformer" if model == "tcn_transformer" else "cross_attention"
    names = sorted(paths)
    n_val = max(1, len(names) // 6)
    train = dict(config["learning"]["train"], max_epochs=1,
                 missing_audio={"shares": [0.0, 0.4], "patterns": ["contiguous"], "fill": "zeros"})
    job = {"model": model, "hparams": config["learning"][section], "dims": DIMS, "train": train,
           "fold": {"fold": 0, "train": names[n_val:], "validation": names[:n_val]},
           "aligned": {n: str(p) for n, p in paths.items()}, "out": str(work / "run")}
    (work / "job.json").write_text(json.dumps(job))
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(src=str(src), job=str(work / "job.json"))],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"training failed (status {status})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": usage.ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    parser.add_argument("--model", default="jca")
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the vafusion sources to train with")
    parser.add_argument("--keep", type=Path, help="keep the synthetic data here (reused when present)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    rows = []
    try:
        for scale in args.scales:
            folder = work / f"scale{scale:g}"
            if folder.is_dir() and any(folder.glob("*.h5")):
                paths = {p.stem: p for p in sorted(folder.glob("*.h5"))}
            else:
                folder.mkdir(parents=True, exist_ok=True)
                paths = make_dataset(folder, scale)
            aligned_gb = sum(p.stat().st_size for p in paths.values()) / 2**30
            frames = 0
            for p in paths.values():
                with h5py.File(p) as h5:
                    frames += h5["valence"].shape[0]
            result = train_once(args.src.resolve(), paths, args.model, folder)
            rows.append((scale, len(paths), frames, aligned_gb, result["peak_rss_gb"], result["windows_per_s"]))
            print(f"scale {scale:g}: {len(paths)} trials, {frames} frames, aligned {aligned_gb:.2f} GiB -> "
                  f"peak RSS {result['peak_rss_gb']:.2f} GiB, {result['windows_per_s']:.1f} windows/s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n## Training at scale ({args.model}, 1 epoch, 1 thread, sources {args.src})\n")
    print("| share of Aff-Wild2 | trials | frames | aligned GiB | peak RSS GiB | windows/s |")
    print("|---|---|---|---|---|---|")
    for scale, n, frames, gb, rss, wps in rows:
        print(f"| {scale:g} | {n} | {frames} | {gb:.2f} | {rss:.2f} | {wps:.1f} |")
    if len(rows) >= 2:
        frames = np.array([r[2] for r in rows], float)
        rss = np.array([r[4] for r in rows])
        slope, intercept = np.polyfit(frames, rss, 1)
        print(f"\npeak RSS = {intercept:.2f} GiB + {slope * 1e6:.3f} GiB per million frames; "
              f"at Aff-Wild2's {AFFWILD2_FRAMES / 1e6:.2f} M frames: {intercept + slope * AFFWILD2_FRAMES:.2f} GiB")


if __name__ == "__main__":
    main()
