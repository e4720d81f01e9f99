"""Planning benchmark (part of `make bench`): how long `snakemake -n` takes on a dataset of
Aff-Wild2's size. Prints measured figures, asserts nothing.

The layout is synthetic and the media are placeholders (planning never opens a video):
594 trials as in the ABAW VA challenge (356 train, 76 validation, 162 test), 16 of the
videos with two annotated persons (`_left`/`_right`), so 578 videos, spread over nested
folders, every trial with a cropped_aligned folder, the default config (3 models x 6 folds).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = {"train": 356, "validation": 76, "test": 162}
TWO_PERSON_VIDEOS = 16


def build_layout(root: Path, fraction: float = 1.0) -> dict:
    """Write the synthetic dataset (``fraction`` of Aff-Wild2's size) below ``root``; return
    the config's data section."""
    videos, annotations, cropped = root / "videos", root / "annotations", root / "cropped_aligned"
    names = []
    for partition, n in PARTITIONS.items():
        names += [(partition, f"{partition}_{i:03d}") for i in range(round(n * fraction))]
    # the first training trials are the two persons of the two-person videos
    trials = []
    for k, (partition, name) in enumerate(names):
        if partition == "train" and k < 2 * round(TWO_PERSON_VIDEOS * fraction):
            video = f"duo_{k // 2:02d}"
            trials.append((partition, f"{video}_{'left' if k % 2 == 0 else 'right'}", video))
        else:
            trials.append((partition, name, name))
    test_list = []
    for partition, trial, video in trials:
        path = videos / f"batch{sum(map(ord, video)) % 3 + 1}" / f"{video}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
        (cropped / trial).mkdir(parents=True, exist_ok=True)
        if partition == "test":
            test_list.append(trial)
        else:
            ann = annotations / partition / f"{trial}.txt"
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text("valence,arousal\n" + "0.1,0.2\n" * 10)
    (root / "test_trials.txt").write_text("\n".join(test_list) + "\n")
    return {
        "videos": str(videos),
        "annotations": {p: str(annotations / p) for p in ("train", "validation")},
        "cropped_aligned": str(cropped),
        "test_trials": str(root / "test_trials.txt"),
    }


def plan(workdir: Path, config: Path, *extra: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "-n", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    print("Planning benchmark: synthetic Aff-Wild2-sized layout (594 trials: 356 train, 76 validation, "
          "162 test; 578 videos, 16 with two persons), placeholder media, default learning config "
          f"({len(config['learning']['models'])} models x {config['learning']['n_folds']} folds)")
    # Smaller copies show how the time grows: linear in the number of jobs unless some
    # input function rescans the disk for every job.
    rows = []
    for fraction in (0.25, 0.5, 1.0):
        with tempfile.TemporaryDirectory(prefix="vafusion-plan-") as tmp:
            root = Path(tmp)
            config["data"] = build_layout(root / "dataset", fraction)
            config_path = root / "config.yaml"
            config_path.write_text(yaml.safe_dump(config))
            variants = [("snakemake -n", ())]
            if fraction == 1.0:
                variants.append(("snakemake -n --quiet rules", ("--quiet", "rules")))
            for label, extra in variants:
                times, out = [], ""
                for _ in range(args.repeats):
                    seconds, out = plan(root, config_path, *extra)
                    times.append(seconds)
                total = re.search(r"^total\s+(\d+)", out, re.M)
                jobs = int(total.group(1)) if total else 0
                trials = len(list((root / "dataset" / "cropped_aligned").iterdir()))
                rows.append((label, trials, jobs, statistics.median(times), times))
    print(f"  {'command':<28} {'trials':>6} {'jobs':>6} {'median s':>9}  runs (s)")
    for label, trials, jobs, median, times in rows:
        print(f"  {label:<28} {trials:>6} {jobs:>6} {median:>9.1f}  {', '.join(f'{t:.1f}' for t in times)}")
    (_, _, j0, t0, _), (_, _, j1, t1, _) = rows[0], rows[2]
    print(f"  marginal cost {1000 * (t1 - t0) / (j1 - j0):.2f} ms per job between {j0} and {j1} jobs")


if __name__ == "__main__":
    main()
