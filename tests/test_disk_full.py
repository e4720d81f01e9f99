"""A job that fails because its disk is full says so: the message names the output, the
file system's mount point and its free space ("no space left on device"), whichever
library raised the error (torch.save, h5py, ffmpeg, matplotlib's PNG writer), and no
half-written output is left. The file systems are real small ones: a tmpfs (or, where
tmpfs mounts are refused, a loop-mounted ext2 image) mounted for the test."""

from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from vafusion.io import DiskFullError, atomic_output, file_system, format_size
from vafusion.jobs import job_logging

LEARNING = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())["learning"]
DIMS = {"iresnet50": 512, "vggish": 128, "mfcc": 39}
MiB = 1 << 20


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size, inodes=None)`` mounts a file system with ``size`` bytes free (and at
    most ``inodes`` files) and returns its mount point; unmounted after the test."""
    mounts = []

    def mount(size: int, inodes: int | None = None) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        tried = _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point))
        if tried.returncode != 0:  # no tmpfs here: an ext2 image on a loop device
            image = tmp_path / f"disk{len(mounts)}.img"
            with open(image, "wb") as fh:
                fh.truncate(max(2 * size, 512 * 1024))
            made = (_run("mkfs.ext2", "-q", "-F", "-m", "0", *(["-N", str(inodes)] if inodes else []), str(image))
                    if shutil.which("mkfs.ext2") else None)
            looped = _run("mount", "-o", "loop", str(image), str(point)) if made and made.returncode == 0 else None
            if looped is None or looped.returncode != 0:
                why = (looped or made).stderr.strip() if (looped or made) else "no mkfs.ext2"
                pytest.skip(f"cannot mount a small file system here (tmpfs: {tried.stderr.strip()}; "
                            f"loop-mounted ext2 image: {why})")
            st = os.statvfs(point)
            with open(point / "filler", "wb") as fh:  # leave ``size`` bytes free, as the tmpfs would
                fh.write(bytes(max(0, st.f_bavail * st.f_frsize - size)))
        mounts.append(point)
        return point

    yield mount
    gc.collect()  # a writer that failed may still hold its file open (torch's, until collected)
    for point in reversed(mounts):
        if _run("umount", str(point)).returncode != 0:
            _run("umount", "-l", str(point))


def assert_plain_disk_full(err: BaseException, output: Path, mount: Path) -> str:
    """The message a user reads: the output, the mount point, 'no space left on device'
    and the free space of that file system; the library's error kept as the cause."""
    message = str(err)
    assert isinstance(err, DiskFullError) and err.errno == errno.ENOSPC
    assert message.startswith("no space left on device while writing "), message
    assert str(output) in message, message
    assert f"the file system at {mount} has " in message, message
    assert re.search(rf"has {re.escape(format_size(err.free))} free of {re.escape(format_size(err.total))}", message)
    assert err.mount == str(mount) and 0 <= err.free < err.total
    assert err.__cause__ is not None  # the library's own error is still there
    return message


def no_partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


# --- a real training job on a file system too small for its checkpoint --------------------------

def tiny_dataset(folder: Path, n_trials: int = 4, length: int = 60) -> tuple[dict[str, Path], dict]:
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(n_trials):
        paths[f"trial{i}"] = path = folder / f"trial{i}.h5"
        with h5py.File(path, "w") as h5:
            for stream, dim in DIMS.items():
                h5[stream] = rng.normal(size=(length, dim)).astype(np.float32)
            for target in ("valence", "arousal"):
                h5[target] = rng.uniform(-1, 1, length).astype(np.float32)
                h5[f"valid_{target}"] = np.ones(length, bool)
            h5.attrs["trial"] = f"trial{i}"
    return paths, {"fold": 0, "train": ["trial0", "trial1", "trial2"], "validation": ["trial3"]}


def test_training_on_a_full_disk_says_no_space_left_naming_output_mount_and_free_space(tmp_path, small_fs):
    from vafusion.learning.settings import TrainConfig
    from vafusion.learning.train import train_fold

    paths, fold = tiny_dataset(tmp_path)
    disk = small_fs(1 * MiB)  # the "ca" model alone is ~1.7 MB; its checkpoint with the optimiser ~4x
    out_dir = disk / "models" / "ca" / "fold0"
    outputs = [out_dir / name for name in ("model.pt", "metrics.json", "history.csv", "val_predictions.h5")]
    cfg = TrainConfig.from_dict({**LEARNING["train"], "window": 40, "hop": 20, "batch_size": 4, "selection": "validation",
                                 "max_epochs": 2, "warmup_epochs": 0, "patience": 5}, seed=0)
    log_file = tmp_path / "train.log"
    with pytest.raises(DiskFullError) as caught:
        with job_logging(str(log_file), "train_model ca fold 0", outputs=outputs):
            train_fold("ca", LEARNING["cross_attention"], fold, paths, out_dir, cfg, device="cpu")
    # torch.save's own words say nothing of the disk; the message does, and still quotes them
    message = assert_plain_disk_full(caught.value, out_dir / "last.pt", disk)
    assert "(RuntimeError in torch: [enforce fail at inline_container.cc" in message
    assert "; from OSError: [Errno 28] No space left on device)" in message
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert f"job train_model ca fold 0 failed: {message}" in log_file.read_text()
    # nothing half-written: no partial file, no checkpoint, no model
    assert no_partial_files(disk) == [] and not (out_dir / "last.pt").exists()
    assert not (out_dir / "model.pt").exists()


# --- each writer on a full disk ----------------------------------------------------------------

def test_h5py_writing_into_a_full_disk(small_fs):
    disk = small_fs(256 * 1024)
    out = disk / "features" / "clip.h5"
    with pytest.raises(DiskFullError) as caught:
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as h5:
            h5["x"] = np.zeros(200_000)  # 1.6 MB
    message = assert_plain_disk_full(caught.value, out, disk)
    assert "in h5py:" in message and "written)" in message  # how far it got
    assert not out.exists() and no_partial_files(disk) == []


def test_png_figure_into_a_full_disk_through_the_job_outputs(tmp_path, small_fs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    disk = small_fs(64 * 1024)
    figure = disk / "reports" / "ccc_per_fold.png"
    figure.parent.mkdir()
    with pytest.raises(DiskFullError) as caught:
        # a writer that does not go through atomic_output: job_logging's outputs name the file
        with job_logging(str(tmp_path / "plot.log"), "plot", outputs=[str(figure)]):
            fig = plt.figure(figsize=(8, 8))
            plt.imshow(np.random.default_rng(0).random((400, 400)))
            try:
                fig.savefig(figure, format="png", dpi=90)
            finally:
                plt.close(fig)
    assert_plain_disk_full(caught.value, figure, disk)
    assert "no space left on device while writing" in (tmp_path / "plot.log").read_text()


def test_ffmpeg_audio_into_a_full_disk(small_fs, video_factory):
    from vafusion.audio import extract_audio

    video = video_factory(seconds=3.0)
    disk = small_fs(64 * 1024)  # 3 s of 16 kHz PCM16 is 96 kB
    wav, meta = disk / "audio" / "clip.wav", disk / "audio" / "clip.json"
    with pytest.raises(DiskFullError) as caught:
        extract_audio(video, wav, meta)
    message = assert_plain_disk_full(caught.value, wav, disk)
    assert "ffmpeg could not extract the audio" in message  # MediaError's text, quoted
    assert not wav.exists() and not meta.exists() and no_partial_files(disk) == []


def test_writing_past_the_end_of_a_full_disk(small_fs):
    disk = small_fs(64 * 1024)
    out = disk / "labels" / "trial.h5"
    with pytest.raises(DiskFullError) as caught:
        with atomic_output(out) as tmp:
            tmp.write_bytes(bytes(1 * MiB))
    message = assert_plain_disk_full(caught.value, out, disk)
    assert "OSError: [Errno 28] No space left on device" in message
    assert not out.exists() and no_partial_files(disk) == []


def fill_up(disk: Path) -> None:
    """Write into ``disk`` in 4 KiB pieces until the device refuses."""
    with pytest.raises(OSError) as refused:
        with open(disk / "filler_up", "wb", buffering=0) as fh:
            while True:
                fh.write(bytes(4096))
    assert refused.value.errno == errno.ENOSPC


def test_a_writer_that_hides_the_errno_is_caught_by_the_file_system_check(small_fs):
    """torch.save given a path writes with a C++ stream: its error says nothing of the disk
    (the issue's "[enforce fail at inline_container.cc:672] . unexpected pos ..."); the
    file system, full when the write failed, does."""
    import torch

    disk = small_fs(256 * 1024)
    fill_up(disk)
    out = disk / "models" / "model.pt"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(DiskFullError) as caught:
        with atomic_output(out) as tmp:
            torch.save({"w": torch.zeros(100_000)}, tmp)
    message = assert_plain_disk_full(caught.value, out, disk)
    assert "[Errno 28]" not in message and "(RuntimeError in torch: " in message
    assert not out.exists() and no_partial_files(disk) == []


def test_no_inode_left_for_the_temporary_file(small_fs):
    disk = small_fs(1 * MiB, inodes=64)
    with pytest.raises(OSError) as filled:
        for i in range(100_000):
            (disk / f"f{i}").touch()
    assert filled.value.errno == errno.ENOSPC
    out = disk / "labels.h5"
    with pytest.raises(DiskFullError) as caught:
        with atomic_output(out) as tmp:  # mkstemp itself fails
            tmp.write_bytes(b"never")
    assert "it has no free inodes" in str(caught.value) and str(out) in str(caught.value)
    assert caught.value.mount == str(disk) and f"file system at {disk} has " in str(caught.value)


def test_other_failures_keep_their_own_error(tmp_path, small_fs, caplog):
    """Bad input is not a full disk: same exception, same message, on a small file system
    with room, on a nearly full one (the error chain says nothing of the disk) and on the
    usual one."""
    disk = small_fs(1 * MiB)
    nearly_full = small_fs(256 * 1024)
    fill_up(nearly_full)
    filler = nearly_full / "filler_up"
    os.truncate(filler, filler.stat().st_size - 8 * 1024)  # 8 KiB free: "full" by the file system check alone
    assert file_system(nearly_full).full
    for folder in (tmp_path, disk, nearly_full):
        out = folder / "labels.h5"
        with pytest.raises(ValueError, match="^bad.txt line 3: valence 7.0 is outside") as caught:
            with job_logging(None, "read_annotation bad", outputs=[out]), atomic_output(out) as tmp:
                tmp.write_bytes(b"a few bytes")
                raise ValueError("bad.txt line 3: valence 7.0 is outside [-1, 1]")
        assert type(caught.value) is ValueError and not out.exists()
    assert "no space" not in caplog.text


def test_a_quota_is_named_as_such(tmp_path):
    err = OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(DiskFullError, match=f"^disk quota exceeded while writing {re.escape(str(tmp_path))}/x.h5"):
        with job_logging(None, "quota", outputs=[tmp_path / "x.h5"]):
            raise err
