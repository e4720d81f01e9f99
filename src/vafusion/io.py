"""Output helpers: a failed job must never leave a half-written file behind, and a job that
fails because the disk is full says so in plain words.

Libraries report a full disk in their own ways: ``OSError`` errno 28 (Python's files,
matplotlib/PIL), "errno = 28 ... No space left on device" inside h5py's message, "No space
left on device" in ffmpeg's stderr, and nothing recognisable at all from ``torch.save``
("[enforce fail at inline_container.cc:672] . unexpected pos 4183424 vs 4183312",
"basic_ios::clear: iostream error"). ``disk_full_error`` therefore calls an error a full disk when
its chain says so (errno ENOSPC/EDQUOT, or their texts), or when it is one of the known
errno-losing write failures (torch's C++ stream) and the file system that holds the output
is full (``os.statvfs``); any other error, a ValueError on a nearly full disk included,
keeps its own message. A full disk becomes one ``DiskFullError`` that names the output, the
file system's mount point and its free space. ``atomic_output`` applies it at the moment a write fails (before its
partial file is removed and the space comes back); ``vafusion.jobs.job_logging`` applies it
to the job's outputs for writers that do not go through ``atomic_output``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# Free space under which a file system counts as full after a write failed for a reason
# the error does not tell. Such a failure leaves less free space than the write asked for,
# but not always next to nothing: with large folios (Linux 6.x ext4) a 4 MB write into
# 1 MB of free space fails whole, leaving the 1 MB. 4 MiB, or 5 % of a small file system,
# catches the usual cases while a disk with room is not called full; writers that keep
# the errno (Python files, h5py, ffmpeg, ``vafusion.weights.torch_save``) do not depend on it.
FULL_BELOW_BYTES = 4 << 20
FULL_BELOW_SHARE = 0.05

_NO_SPACE_TEXT = re.compile(
    rf"no space left on device|disk quota exceeded|\bENOSPC\b|\bEDQUOT\b"
    rf"|errno\s*=\s*({errno.ENOSPC}|{errno.EDQUOT})\b|\[Errno ({errno.ENOSPC}|{errno.EDQUOT})\]",
    re.IGNORECASE)
# write failures that lose the errno: torch.save given a path (a C++ stream)
_ERRNO_LOST_TEXT = re.compile(r"inline_container\.cc.*unexpected pos|basic_ios::clear: iostream error", re.IGNORECASE)
_QUOTA_TEXT = re.compile(rf"disk quota exceeded|\bEDQUOT\b|errno\s*=\s*{errno.EDQUOT}\b|\[Errno {errno.EDQUOT}\]",
                         re.IGNORECASE)


class DiskFullError(OSError):
    """A write failed because the file system holding ``path`` is full (errno ENOSPC).

    ``str()`` is the whole plain message; ``mount``, ``free`` and ``total`` (bytes) describe
    the file system when the failure was seen. The library's own error is the ``__cause__``.
    """

    def __init__(self, message: str, path: str | None = None, mount: str | None = None,
                 free: int | None = None, total: int | None = None):
        super().__init__(errno.ENOSPC, message)
        self.message, self.path, self.mount, self.free, self.total = message, path, mount, free, total

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message, self.path, self.mount, self.free, self.total)


@dataclass(frozen=True)
class FileSystem:
    mount: str  # mount point
    free: int  # bytes available (df's "Avail")
    total: int  # bytes
    free_inodes: int | None  # None: the file system does not count inodes

    @property
    def full(self) -> bool:
        return (self.free < min(FULL_BELOW_BYTES, FULL_BELOW_SHARE * self.total)
                or self.free_inodes == 0)


def file_system(path: str | os.PathLike) -> FileSystem:
    """The file system that holds (or would hold) ``path``: its mount point and free space."""
    p = os.path.realpath(os.path.abspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    st = os.statvfs(p)
    mount = p
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return FileSystem(mount=mount, free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize,
                      free_inodes=st.f_favail if st.f_files else None)


def disk_full_error(err: BaseException, outputs: Iterable[str | os.PathLike] = (), *,
                    partial: str | os.PathLike | None = None) -> DiskFullError | None:
    """A ``DiskFullError`` explaining ``err`` when the disk is the cause, else None.

    The disk is the cause when the error chain says so (errno ENOSPC/EDQUOT, or their usual
    texts in a library's message), or when the chain is a write failure known to lose the
    errno (``_ERRNO_LOST_TEXT``) and the file system of one of ``outputs`` is full. Any other
    error is not called a full disk, however little space is left.
    The message names those outputs, the mount point and its free space, and ends with the
    original error (kept as the cause by the callers). ``partial``: the temporary file that
    was being written, whose size tells how far the write got.
    """
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, DiskFullError):
            return e if e is err else DiskFullError(e.message, e.path, e.mount, e.free, e.total)
    evidence = next((e for e in chain if _says_no_space(e)), None)
    if evidence is None and not any(_ERRNO_LOST_TEXT.search(_text(e)) for e in chain):
        return None  # nothing says the disk: the error keeps its own message
    outputs = [str(p) for p in outputs]
    failed = [str(e.filename) for e in chain if isinstance(e, OSError) and e.filename] if evidence else []
    systems = {}
    for out in dict.fromkeys(outputs + failed):
        try:
            systems[out] = file_system(out)
        except (OSError, ValueError):  # an odd path must not hide the job's own error
            continue
    full = [out for out, fs in systems.items() if fs.full]
    if evidence is None and not full:
        return None
    named = full or [f for f in failed if f in systems] or list(systems)
    quota = evidence is not None and not full and _QUOTA_TEXT.search(_text(evidence)) is not None
    reason = "disk quota exceeded" if quota else "no space left on device"
    origin = _origin(err)
    if evidence is not None and evidence is not err:  # e.g. torch's RuntimeError over Python's OSError
        origin += f"; from {type(evidence).__name__}: {_text(evidence)[:200]}"
    if not named:
        return DiskFullError(f"{reason} ({origin})")
    fs = systems[named[0]]
    what = ", ".join(named[:3]) + (f" (and {len(named) - 3} more)" if len(named) > 3 else "")
    written = ""
    if partial is not None:
        with contextlib.suppress(OSError):
            size = os.path.getsize(partial)
            written = f" ({format_size(size)} of it written)" if size else ""
    inodes = "; it has no free inodes" if fs.free_inodes == 0 else ""
    message = (f"{reason} while writing {what}{written}: the file system at {fs.mount} has "
               f"{format_size(fs.free)} free of {format_size(fs.total)}{inodes}. Free some space there or "
               f"move the output folder to a larger disk, then rerun ({origin})")
    return DiskFullError(message, named[0], fs.mount, fs.free, fs.total)


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _says_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return _NO_SPACE_TEXT.search(_text(e)) is not None


def _text(e: BaseException) -> str:
    return " ".join(str(e).split())


def _origin(e: BaseException) -> str:
    """'RuntimeError in torch: <its message>': the error and the library it came from."""
    library = None
    tb = e.__traceback__
    while tb is not None:  # the innermost frame of an installed third-party package
        top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        installed = re.search(r"[/\\](site|dist)-packages[/\\]", tb.tb_frame.f_code.co_filename)
        if installed and top and top not in sys.stdlib_module_names and top != "vafusion":
            library = top
        tb = tb.tb_next
    text = _text(e)
    if len(text) > 400:
        text = text[:400] + " ..."
    return f"{type(e).__name__}{f' in {library}' if library else ''}: {text}"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file sits in the same directory so the final ``os.replace`` is atomic.
    On any exception the temporary file is removed and ``path`` is left untouched; when the
    disk is the cause (``disk_full_error``, checked before the partial file is removed) the
    exception becomes a ``DiskFullError`` naming ``path``, with the original as its cause.
    """
    final = Path(path)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        disk = disk_full_error(err, [final], partial=tmp) if isinstance(err, Exception) else None
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if disk is None or disk is err:
            raise
        raise disk from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
