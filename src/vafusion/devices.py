"""Which device a job runs on.

Snakemake's ``gpu`` resource only limits how many GPU jobs run at once; it does not say
which GPU each should use. Under SLURM that is the scheduler's job (``--gpus=1`` leaves one
GPU visible). On a workstation with several GPUs every job would pick ``cuda:0``, so a job
that may use any GPU claims one that no other vafusion job on this machine holds: an
exclusive ``flock`` on one lock file per GPU, released by the kernel when the job ends
(also when it crashes).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "VAFUSION_GPU_LOCK_DIR"


def cuda_status() -> tuple[bool, str]:
    """(usable, why): whether CUDA can run here, and the reason in words. A machine with an
    NVIDIA driver on which CUDA does not work (a driver too old for this torch build, a
    CPU-only torch) is told apart from a machine without a GPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable:
        return True, f"CUDA works ({torch.cuda.device_count()} GPU(s), torch built for CUDA {torch.version.cuda})"
    driver = Path("/proc/driver/nvidia/version")
    if not driver.exists() and shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU driver on this machine"
    said = "; ".join(str(w.message).strip() for w in caught) or "torch.cuda.is_available() is False"
    build = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda \
        else f"torch {torch.__version__} is a CPU-only build"
    return False, f"an NVIDIA driver is present but CUDA is unusable ({build}): {said}"


def resolve_device(requested: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; 'cpu'/'cuda'/'cuda:N' as given.
    What 'auto' picked, and why, goes to the log; a GPU that is present but unusable is a
    warning, so that a run does not go on for days on the CPU unnoticed."""
    if requested == "auto":
        usable, why = cuda_status()
        if usable:
            log.info("device auto -> cuda: %s", why)
        elif why.startswith("an NVIDIA driver"):
            log.warning("!!! device auto -> cpu although this machine has an NVIDIA GPU: %s. Fix the driver or "
                        "the torch build, or set the device to cpu to silence this. !!!", why)
        else:
            log.info("device auto -> cpu: %s", why)
        return torch.device("cuda" if usable else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        usable, why = cuda_status()
        if not usable:
            raise RuntimeError(f"device '{requested}' was requested but CUDA cannot run here: {why}")
    return device


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "vafusion-gpu-locks")


@contextlib.contextmanager
def claim_slot(names: list[str], lock_dir: Path, poll_s: float = 1.0) -> Iterator[int]:
    """Hold the first of ``names`` (one per GPU) that nobody else holds; wait while all are
    held. Yields its index."""
    if not names:
        raise ValueError("no slots to claim")
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            lock_dir.chmod(0o1777)  # shared by every user's jobs, like /tmp
    waiting_since = None
    while True:
        for index, name in enumerate(names):
            fd = os.open(lock_dir / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if waiting_since is not None:
                log.info("waited %.0f s for a free GPU", time.monotonic() - waiting_since)
            try:
                yield index
            finally:
                os.close(fd)  # releases the lock
            return
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.warning("all %d GPUs are held by other vafusion jobs (lock files in %s); waiting for one. "
                        "Run with --resources gpu=%d so Snakemake starts no more GPU jobs than there are GPUs.",
                        len(names), lock_dir, len(names))
        time.sleep(poll_s)


def _gpu_names() -> list[str]:
    """A stable name per visible GPU: its UUID, so that two jobs with different
    CUDA_VISIBLE_DEVICES orders still lock the same physical device."""
    names = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        names.append(f"gpu-{uuid}" if uuid is not None else f"gpu{index}")
    return names


@contextlib.contextmanager
def job_device(requested: str, lock_dir: Path | None = None) -> Iterator[str]:
    """The device for one job, held while the job runs.

    'auto' or 'cuda' with several visible GPUs claims a free one; one visible GPU (a SLURM
    allocation, a single-GPU machine) is used as it is; 'cpu' and 'cuda:N' are taken
    literally, so a user who pins a device keeps full control.
    """
    log.info("device %s requested; CUDA_VISIBLE_DEVICES=%s", requested,
             os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    if requested in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        with claim_slot(_gpu_names(), lock_dir or default_lock_dir()) as index:
            log.info("running on cuda:%d (%s), claimed for this job", index, torch.cuda.get_device_name(index))
            yield f"cuda:{index}"
        return
    device = resolve_device(requested)
    log.info("running on %s", device)
    yield str(device)
