"""Aff-Wild2 valence/arousal annotation files.

Format: a header line ``valence,arousal`` then one ``v,a`` row per video frame, values in
[-1, 1]; ``-5`` marks a frame that was not annotated (per target).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vafusion.io import atomic_output

HEADER = "valence,arousal"
INVALID = -5.0
TARGETS = ("valence", "arousal")

log = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """An annotation file that breaks the format; the message names the file and line."""


@dataclass(frozen=True)
class Annotation:
    valence: np.ndarray  # (T,) float32, INVALID where unannotated
    arousal: np.ndarray  # (T,) float32, INVALID where unannotated

    @property
    def n_frames(self) -> int:
        return int(self.valence.shape[0])

    def valid(self, target: str) -> np.ndarray:
        """Boolean mask of the frames annotated for ``target``."""
        return getattr(self, target) != INVALID


def read_annotation(path: str | Path) -> Annotation:
    """Parse and validate one annotation file; raise AnnotationError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({err})") from None
    lines = text.splitlines()
    if not lines:
        raise AnnotationError(f"{path}: empty file, expected header '{HEADER}'")
    header = lines[0].strip().replace(" ", "").lower()
    if header != HEADER:
        raise AnnotationError(f"{path}:1: header is '{lines[0].strip()}', expected '{HEADER}'")

    rows: list[tuple[float, float]] = []
    for line_no, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped:
            # A trailing blank line is common; a blank line between rows would shift frames.
            if any(rest.strip() for rest in lines[line_no:]):
                raise AnnotationError(f"{path}:{line_no}: blank line inside the data rows")
            break
        fields = stripped.split(",")
        if len(fields) != 2:
            raise AnnotationError(
                f"{path}:{line_no}: expected 2 comma-separated values, found {len(fields)}: '{stripped}'"
            )
        values = []
        for name, field in zip(TARGETS, fields):
            try:
                value = float(field)
            except ValueError:
                raise AnnotationError(
                    f"{path}:{line_no}: {name} '{field.strip()}' is not a number"
                ) from None
            if not math.isfinite(value):
                raise AnnotationError(f"{path}:{line_no}: {name} '{field.strip()}' is not finite")
            if value != INVALID and not -1.0 <= value <= 1.0:
                raise AnnotationError(
                    f"{path}:{line_no}: {name} {value:g} is outside [-1, 1] (and is not -5)"
                )
            values.append(value)
        rows.append((values[0], values[1]))
    if not rows:
        raise AnnotationError(f"{path}: no data rows after the header")
    table = np.asarray(rows, dtype=np.float32)
    return Annotation(valence=table[:, 0].copy(), arousal=table[:, 1].copy())


def write_annotation(path: str | Path, valence: np.ndarray, arousal: np.ndarray) -> None:
    """Write an annotation file in the Aff-Wild2 format (used by the demo builder)."""
    lines = [HEADER]
    for v, a in zip(valence, arousal):
        lines.append(f"{_fmt(v)},{_fmt(a)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fmt(value: float) -> str:
    return "-5" if value == INVALID else f"{value:.4f}"


def write_labels(annotation_path: str | Path, out_path: str | Path) -> Annotation:
    """Validate an annotation file and store it as HDF5 labels (values + per-target masks)."""
    annotation = read_annotation(annotation_path)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as h5:
        for target in TARGETS:
            h5.create_dataset(target, data=getattr(annotation, target))
            h5.create_dataset(f"valid_{target}", data=annotation.valid(target))
        h5.attrs["annotation"] = str(annotation_path)
        h5.attrs["n_frames"] = annotation.n_frames
    counts = {t: int(annotation.valid(t).sum()) for t in TARGETS}
    for target, count in counts.items():
        if count == 0:
            log.warning("%s: no annotated frame for %s (all -5)", annotation_path, target)
    log.info("%s: %d frames, valid valence %d, valid arousal %d", annotation_path,
             annotation.n_frames, counts["valence"], counts["arousal"])
    return annotation
