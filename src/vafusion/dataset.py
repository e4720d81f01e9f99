"""Trial discovery for the Aff-Wild2 data layout.

A trial is an annotation file's stem. Its video is the file with the same stem or, for the
two-person videos of Aff-Wild2, the stem without its ``_left``/``_right`` suffix. Test trials
are named one per line in ``test_trials``. Everything is checked here, once, before any job
runs, and all problems are reported together, each naming the file concerned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".mpg", ".webm")
PARTITIONS = ("train", "validation", "test")
SIDES = ("left", "right")


class DatasetError(ValueError):
    """The data layout is inconsistent; the message lists every problem found."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__(
            "the dataset has problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class Trial:
    name: str
    partition: str  # one of PARTITIONS
    video: str  # name (stem) of the video it comes from
    side: str | None  # "left"/"right" for a person in a two-person video, else None
    annotation: Path | None  # None for test trials
    cropped_aligned: Path | None  # the dataset's aligned face frames, if it has them


@dataclass(frozen=True)
class Dataset:
    videos: dict[str, Path]  # every video found, by name
    trials: dict[str, Trial]  # by name, sorted

    def partition(self, name: str) -> list[Trial]:
        return [t for t in self.trials.values() if t.partition == name]

    @property
    def used_videos(self) -> dict[str, Path]:
        """The videos at least one trial needs (others are ignored)."""
        names = sorted({t.video for t in self.trials.values()})
        return {name: self.videos[name] for name in names}


def find_videos(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Map video name -> path, searching ``root`` recursively; report duplicated names."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, []).append(path)
    problems = [
        f"video name '{name}' is found {len(paths)} times: " + ", ".join(map(str, paths))
        for name, paths in found.items()
        if len(paths) > 1
    ]
    return {name: paths[0] for name, paths in found.items()}, problems


def video_for_trial(trial: str, videos: dict[str, Path]) -> tuple[str, str | None] | None:
    """Return (video name, side) for a trial, or None when no video matches."""
    if trial in videos:
        return trial, None
    for side in SIDES:
        suffix = f"_{side}"
        if trial.endswith(suffix) and trial[: -len(suffix)] in videos:
            return trial[: -len(suffix)], side
    return None


def discover(data: dict) -> Dataset:
    """Build the Dataset described by the config's ``data`` section, or raise DatasetError."""
    problems: list[str] = []

    def existing(key: str, value: str | None, kind: str) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        ok = path.is_dir() if kind == "directory" else path.is_file()
        if not ok:
            problems.append(f"data.{key}: {kind} '{path}' does not exist")
            return None
        return path

    videos_dir = existing("videos", data["videos"], "directory")
    # annotations: null is prediction only (learning.trained_run): every video, or those
    # that test_trials lists, becomes a test trial
    predict_only = data["annotations"] is None
    annotation_dirs = {} if predict_only else {
        part: existing(f"annotations.{part}", data["annotations"][part], "directory")
        for part in ("train", "validation")
    }
    cropped_root = existing("cropped_aligned", data.get("cropped_aligned"), "directory")
    test_list = existing("test_trials", data.get("test_trials"), "file")
    if problems:
        raise DatasetError(problems)

    videos, problems = find_videos(videos_dir)

    annotations: dict[str, tuple[str, Path]] = {}
    for part, directory in annotation_dirs.items():
        for path in sorted(directory.glob("*.txt")):
            if path.stem in annotations:
                other = annotations[path.stem][1]
                problems.append(f"trial '{path.stem}' is annotated twice: {other} and {path}")
                continue
            annotations[path.stem] = (part, path)
    if not annotations and not predict_only:
        problems.append(
            "no annotation files (*.txt) in "
            + " or ".join(f"'{d}'" for d in annotation_dirs.values())
        )

    test_names: list[tuple[str, str]] = []
    if predict_only and test_list is None:
        test_names = [(name, str(path)) for name, path in videos.items()]
    if test_list is not None:
        for line_no, line in enumerate(test_list.read_text(encoding="utf-8").splitlines(), 1):
            name = line.strip()
            if name and not name.startswith("#"):
                test_names.append((name, f"{test_list}:{line_no}"))

    trials: dict[str, Trial] = {}
    requests = [(name, part, path, str(path)) for name, (part, path) in annotations.items()]
    requests += [(name, "test", None, where) for name, where in test_names]
    for name, part, annotation, where in requests:
        if name in trials:
            problems.append(f"{where}: trial '{name}' is listed twice (already a {trials[name].partition} trial)")
            continue
        match = video_for_trial(name, videos)
        if match is None:
            problems.append(
                f"{where}: no video for trial '{name}' in '{videos_dir}' "
                f"(looked for '{name}'" + (", and without its _left/_right suffix" if name.endswith(("_left", "_right")) else "")
                + f", extensions {' '.join(VIDEO_EXTENSIONS)})"
            )
            continue
        video, side = match
        cropped = None
        if cropped_root is not None and (cropped_root / name).is_dir():
            cropped = cropped_root / name
        trials[name] = Trial(name, part, video, side, annotation, cropped)

    if problems:
        raise DatasetError(problems)
    return Dataset(videos=videos, trials=dict(sorted(trials.items())))
