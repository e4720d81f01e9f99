"""System tools some tests need (SLURM, Chromium), installed with apt when missing."""

from __future__ import annotations

import os
import shutil
import subprocess


class Unavailable(Exception):
    """A tool cannot be installed or started on this machine (the reason says why)."""


def ensure_installed(tools: list[str], packages: list[str]) -> None:
    """Install ``packages`` with apt unless every one of ``tools`` is on PATH (needs root)."""
    if all(shutil.which(tool) for tool in tools):
        return
    what = "/".join(packages)
    if os.geteuid() != 0:
        raise Unavailable(f"{what} is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{what} is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
