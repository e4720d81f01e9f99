"""Progress lines of long jobs: every 10 % of the work or every 30 s, with rate and time left."""

from __future__ import annotations

import logging

from vafusion.jobs import Progress


class Clock:
    """Seconds that the test advances by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vafusion"]


def test_progress_every_tenth_with_rate_and_time_left(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress("faces of t", 1000, clock=clock)
    for done in range(1, 1001):
        clock.now = done * 0.01  # 100 frames/s
        progress.update(done)
    logged = lines(caplog)
    assert len(logged) == 10  # 10 %, 20 %, ... 100 %
    assert logged[0] == "faces of t: 100/1000 frames (10 %), 100.0 frames/s, 0m09s left"
    assert logged[-1] == "faces of t: 1000/1000 frames (100 %), 100.0 frames/s, 0m00s left"


def test_progress_every_30_s_when_tenths_are_slow(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress("iresnet50", 100_000, "faces", clock=clock)
    for done in range(1, 2001):  # 2 % of the work in 100 s
        clock.now = done * 0.05
        progress.update(done)
    logged = lines(caplog)
    assert len(logged) == 3  # at 30, 60 and 90 s
    assert "600/100000 faces" in logged[0] and "20.0 faces/s" in logged[0] and "1h22m left" in logged[0]


def test_progress_of_unknown_length_reports_count_and_rate(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress("faces of t", 0, clock=clock)
    for done in range(1, 101):
        clock.now = done
        progress.update(done)
    assert lines(caplog) == ["faces of t: 30 frames, 1.0 frames/s", "faces of t: 60 frames, 1.0 frames/s",
                             "faces of t: 90 frames, 1.0 frames/s"]
