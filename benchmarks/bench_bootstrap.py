"""Do the bootstrap's intervals keep their level? Coverage of the 95 % interval of a paired
difference and the share of p < 0.05 under the null, per interval method and number of
validation videos, on the simulated validation sets of tests/test_bootstrap.py (strong
per-video correlation: video-level offsets in the labels and in each model's errors; 30 %
two-person videos; two seeds).

    .venv/bin/python benchmarks/bench_bootstrap.py [--replications 1000] [--resamples 999]
        [--videos 6,8,10,13,20,36] [--methods percentile,studentized,expanded]

Prints one line per (videos, method): coverage per target (valence, arousal, mean), the null
rejection rate, and the binomial standard error at this replication count (sqrt(p(1-p)/R)
at p = 0.95 and 0.05), so a reader can tell a miss from noise. Measured numbers only.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from test_bootstrap import NULL, QUALITY, as_runs, simulate, true_difference  # noqa: E402
from vafusion.learning.bootstrap import METHODS, TARGETS, Bootstrap  # noqa: E402


def measure(method: str, videos: int, replications: int, resamples: int) -> tuple[dict[str, float], float]:
    truth = true_difference()
    rng = np.random.default_rng([11, videos])
    hits = dict.fromkeys(TARGETS, 0)
    for r in range(replications):
        runs, units = as_runs(simulate(QUALITY, rng, n_videos=videos))
        boot = Bootstrap(runs, units, n_resamples=resamples, seed=r, method=method)
        for t in TARGETS:
            d = boot.difference("better", "worse", t)
            hits[t] += d.low <= truth[t] <= d.high
    rng = np.random.default_rng([12, videos])
    rejected = 0
    for r in range(replications):
        runs, units = as_runs(simulate(NULL, rng, n_videos=videos))
        rejected += Bootstrap(runs, units, n_resamples=resamples, seed=r, method=method).difference(
            "a", "b", "mean").p_value < 0.05
    return {t: h / replications for t, h in hits.items()}, rejected / replications


def main() -> None:
    logging.getLogger("vafusion").setLevel(logging.ERROR)  # a resample without a defined CCC is routine here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=999)
    parser.add_argument("--videos", default="6,8,10,13,20,36")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    r = args.replications
    print(f"{r} replications of {args.resamples} resamples; binomial se: coverage "
          f"{math.sqrt(0.95 * 0.05 / r):.3f}, null rejection {math.sqrt(0.05 * 0.95 / r):.3f}")
    print("| videos | method | coverage valence | coverage arousal | coverage mean | null p<0.05 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for videos in map(int, args.videos.split(",")):
        for method in args.methods.split(","):
            started = time.perf_counter()
            coverage, rejection = measure(method, videos, r, args.resamples)
            print(f"| {videos} | {method} | " + " | ".join(f"{coverage[t]:.3f}" for t in TARGETS)
                  + f" | {rejection:.3f} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
