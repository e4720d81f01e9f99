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


def build_layout(root: Path) -> dict:
    """Write the synthetic dataset below ``root``; return the config's data section."""
    videos, annotations, cropped = root / "videos", root / "annotations", root / "cropped_aligned"
    names = []
    for partition, n in PARTITIONS.items():
        names += [(partition, f"{partition}_{i:03d}") for i in range(n)]
    # the first 32 training trials are the two persons of 16 videos
    trials = []
    for k, (partition, name) in enumerate(names):
        if partition == "train" and k < 2 * TWO_PERSON_VIDEOS:
            video = f"duo_{k // 2:02d}"
            trials.append((partition, f"{video}_{'left' if k % 2 == 0 else 'right'}", video))
        else:
            trials.append((partition, name, name))
    test_list = []
    for i, (partition, trial, video) in enumerate(trials):
        path = videos / f"batch{i % 3 + 1}" / f"{video}.mp4"
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
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vafusion-plan-") as tmp:
        root = Path(tmp)
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        config["data"] = build_layout(root / "affwild2-sized")
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        print("Planning at Aff-Wild2 scale: 594 trials (356 train, 76 validation, 162 test), "
              "578 videos (16 with two persons), default learning config "
              f"({len(config['learning']['models'])} models x {config['learning']['n_folds']} folds)")
        for label, extra in (("snakemake -n", ()), ("snakemake -n --quiet rules", ("--quiet", "rules"))):
            times, out = [], ""
            for _ in range(args.repeats):
                seconds, out = plan(root, config_path, *extra)
                times.append(seconds)
            total = re.search(r"^total\s+(\d+)", out, re.M)
            jobs = int(total.group(1)) if total else 0
            print(f"  {label:<28} {jobs} jobs planned: median {statistics.median(times):.1f} s "
                  f"(runs: {', '.join(f'{t:.1f}' for t in times)} s)")


if __name__ == "__main__":
    main()
