"""Glue for the thin scripts in workflow/scripts: log to the rule's log file and stderr."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Callable, Iterable, Iterator

from vafusion.io import disk_full_error

log = logging.getLogger("vafusion")


@contextlib.contextmanager
def job_logging(log_path: str | None, job: str,
                outputs: Iterable | None = None) -> Iterator[logging.Logger]:
    """Send vafusion's log records to the job's log file (and stderr); record failures.

    The error message lands in the log file as well as in Snakemake's output, so a user
    reading only the log sees which file failed and why. ``outputs``: the job's output
    paths (``snakemake.output``); when the job fails because the disk holding them is full
    (``vafusion.io.disk_full_error``), the error raised and logged is a
    ``vafusion.io.DiskFullError`` that says so, with the library's error as its cause.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        log.info("job %s started", job)
        yield log
        log.info("job %s finished", job)
    except Exception as err:
        disk = disk_full_error(err, _paths(outputs))
        log.error("job %s failed: %s", job, disk or err)
        if disk is None or disk is err:
            raise
        raise disk from err
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _paths(outputs) -> list[str]:
    """Output paths from a string, a list (Snakemake's ``snakemake.output``) or nested lists."""
    if outputs is None:
        return []
    if isinstance(outputs, (str, bytes)) or hasattr(outputs, "__fspath__"):
        return [str(outputs)]
    return [p for item in outputs for p in _paths(item)]


class Progress:
    """Progress of a long job in its log: items done, rate and time left, every ``share`` of
    the work (10 %) or every ``every_s`` seconds (30 s), whichever comes first, and at the end.
    ``total`` 0 means unknown (no share, no time left)."""

    def __init__(self, what: str, total: int, unit: str = "frames", *, share: float = 0.1, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.share, self.every_s, self.clock = what, total, unit, share, every_s, clock
        self.started = self.last_logged = clock()
        self.next_done = share * total

    def update(self, done: int) -> None:
        now = self.clock()
        finished = self.total and done >= self.total
        if not (finished or (self.total and done >= self.next_done) or now - self.last_logged >= self.every_s):
            return
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else math.nan
        if self.total:
            left = (self.total - done) / rate if rate > 0 else math.nan
            log.info("%s: %d/%d %s (%.0f %%), %.1f %s/s, %s left", self.what, done, self.total, self.unit,
                     100 * done / self.total, rate, self.unit, _duration(left))
            while self.next_done <= done:
                self.next_done += self.share * self.total
        else:
            log.info("%s: %d %s, %.1f %s/s", self.what, done, self.unit, rate, self.unit)
        self.last_logged = now


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown time"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"
