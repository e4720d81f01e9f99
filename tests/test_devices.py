"""GPU choice per job: distinct devices for concurrent jobs on a multi-GPU workstation.

The claim logic is exercised with real processes and real flock locks on named slots (this
machine has no GPU); the CPU paths of ``job_device`` run as they would in a job.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch

from vafusion.devices import claim_slot, job_device

GPUS = ["gpu-a", "gpu-b"]
ctx = multiprocessing.get_context("fork")


def hold_slot(lock_dir, conn):
    with claim_slot(GPUS, lock_dir, poll_s=0.05) as index:
        conn.send(index)
        conn.recv()  # hold until told to let go


def start_holder(lock_dir):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=hold_slot, args=(lock_dir, child))
    proc.start()
    return proc, parent


def test_concurrent_jobs_get_distinct_gpus_and_wait_when_all_are_held(tmp_path):
    first, first_conn = start_holder(tmp_path)
    assert first_conn.recv() == 0
    second, second_conn = start_holder(tmp_path)
    assert second_conn.recv() == 1
    third, third_conn = start_holder(tmp_path)
    assert not third_conn.poll(0.5), "a third job must wait while both GPUs are held"
    second_conn.send("release")
    second.join(5)
    assert third_conn.poll(5) and third_conn.recv() == 1  # the GPU just given back
    for proc, conn in ((first, first_conn), (third, third_conn)):
        conn.send("release")
        proc.join(5)
        assert proc.exitcode == 0


def test_a_crashed_job_gives_its_gpu_back(tmp_path):
    holder, conn = start_holder(tmp_path)
    assert conn.recv() == 0
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(5)
    with claim_slot(GPUS, tmp_path) as index:
        assert index == 0


def test_lock_folder_is_shared_by_all_users(tmp_path):
    lock_dir = tmp_path / "locks"
    with claim_slot(GPUS, lock_dir):
        pass
    assert lock_dir.stat().st_mode & 0o1777 == 0o1777


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the paths of a machine without a GPU")
def test_without_a_gpu_jobs_run_on_the_cpu_and_pinned_gpus_fail_clearly(tmp_path, caplog):
    caplog.set_level("INFO")
    with job_device("auto", tmp_path) as device:
        assert device == "cpu"
    assert "CUDA_VISIBLE_DEVICES=" in caplog.text and "running on cpu" in caplog.text
    with job_device("cpu", tmp_path) as device:
        assert device == "cpu"
    assert "device auto -> cpu: no NVIDIA GPU driver on this machine" in caplog.text
    with pytest.raises(RuntimeError, match="device 'cuda:1' was requested but CUDA cannot run here: no NVIDIA"):
        with job_device("cuda:1", tmp_path):
            pass
    assert not list(tmp_path.iterdir()), "no lock is taken without GPUs"


def test_gpu_present_but_unusable_is_a_loud_warning(tmp_path, monkeypatch, caplog):
    """A machine with an NVIDIA driver whose CUDA does not work (here: an nvidia-smi on the
    PATH, while torch finds no usable GPU) falls back to the CPU with a warning that says why."""
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level("INFO")
    with job_device("auto", tmp_path / "locks") as device:
        assert device == "cpu"
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning and "although this machine has an NVIDIA GPU" in warning[0].getMessage()
    assert f"torch {torch.__version__} built for CUDA" in warning[0].getMessage()
