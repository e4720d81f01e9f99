"""Shared fixtures: small real media made with the real ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vafusion.video import ffmpeg_binary

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "data" / "grid"
TEST_DATA = REPO / "tests" / "data"


def make_video(path: Path, *, seconds: float = 1.0, fps: int = 25, audio: bool = True,
               size: str = "64x48", vcodec: str = "libx264") -> Path:
    """A synthetic test-pattern video (with a 440 Hz tone when ``audio``)."""
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    cmd += ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac"] if audio else ["-an"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.fixture
def video_factory(tmp_path):
    def factory(name: str = "clip.mp4", **kwargs) -> Path:
        return make_video(tmp_path / name, **kwargs)

    return factory
