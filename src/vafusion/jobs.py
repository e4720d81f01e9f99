"""Glue for the thin scripts in workflow/scripts: log to the rule's log file and stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger("vafusion")


@contextlib.contextmanager
def job_logging(log_path: str | None, job: str) -> Iterator[logging.Logger]:
    """Send vafusion's log records to the job's log file (and stderr); record failures.

    The error message lands in the log file as well as in Snakemake's output, so a user
    reading only the log sees which file failed and why.
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
        log.error("job %s failed: %s", job, err)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
