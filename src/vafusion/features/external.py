"""External feature streams: per-frame features computed by another tool, one CSV per trial.

A stream of ``features.external`` in config.yaml names a folder holding ``<trial>.csv`` for
every trial and the columns to import (fnmatch patterns, in order). Its rows are matched to
the trial's video frames (the frame clock of ``faces/<trial>.h5``, one row per decoded
frame) and written like every other stream: (T, D) float32 + the video's timestamps +
provenance (``vafusion.features.common.FeatureFile``).

Layouts (how a CSV row maps to a video frame):

- ``openface``: OpenFace 2 ``FeatureExtraction`` output. ``frame`` is 1-based; ``success``
  0 marks a frame without a tracked face. Headers carry a leading space (``" AU01_r"``):
  every header is stripped.
- ``pyfeat``: py-feat ``Detector.detect_video`` output saved as CSV (``Fex.to_csv``).
  ``frame`` is the 0-based index of the decoded frame; a row whose face box
  (``FaceRectX/Y/Width/Height``) is empty or NaN is py-feat's "no face in this frame" row.
- ``plain``: row k is frame k (0-based), or a ``frame`` column gives the 0-based frame.
- ``auto`` (default): ``openface`` when the header has frame, timestamp, confidence and
  success; ``pyfeat`` when it has frame and the four face-box columns; else ``plain``.

In every layout a ``success`` column, when present, must hold 0 or 1; 0 marks the row as
having no face.

Row policy. A frame is *valid* when the CSV has a row for it and that row has a face. The
other frames (no row: the tool skipped it; or a no-face row) are filled by ``fill``:
``carry`` (default) repeats the last valid row (frames before the first valid row take the
first valid row), ``zeros`` writes zeros; a trial without any valid row gets zeros either
way (warned). The per-frame ``valid`` mask is stored next to the features, and the counts
(frames without a row, no-face rows, frames filled, rows past the video's end) in the
file's attributes and the log.

The CSV must match the video within ``tolerance`` frames (default 2: decoders can disagree
on the last frame or two): at most that many of the video's frames may lack a row, and rows
may run at most that many frames past the video's end (those rows are dropped). Beyond
that, and for a missing file, a duplicate frame, an empty / NaN / infinite / non-numeric
cell in a selected column of a row with a face, or a pattern matching no column, the job
fails with an error naming the file, the line (1-based, the header is line 1) and the
column, and writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from vafusion.features.registry import MODALITIES

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "openface", "pyfeat", "plain")
FILLS = ("carry", "zeros")
DEFAULTS = {"layout": "auto", "fill": "carry", "tolerance": 2}
KEYS = ("modality", "folder", "columns", "layout", "fill", "tolerance")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a stream name is a folder name
OPENFACE_MARKERS = ("frame", "timestamp", "confidence", "success")
PYFEAT_FACE_BOX = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight")


class ExternalFeatureError(ValueError):
    """A CSV (or the settings) that cannot be imported: the message says where and why."""


# --- settings ----------------------------------------------------------------------------

def validate_settings(name: str, settings: dict) -> list[str]:
    """The problems of stream ``name``'s settings (``features.external.<name>``), each
    naming its key; empty when they are usable. No file is read."""
    key = f"features.external.{name}"
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return [f"{key}: a stream's name must be letters, digits, '_', '.' or '-' (it names a folder)"]
    if not isinstance(settings, dict):
        return [f"{key}: must be a mapping with modality, folder and columns, not {type(settings).__name__}"]
    problems = []
    for unknown in sorted(set(settings) - set(KEYS)):
        problems.append(f"{key}.{unknown}: unknown key; known keys: {', '.join(KEYS)}")
    if settings.get("modality") not in MODALITIES:
        problems.append(f"{key}.modality: must be one of {', '.join(MODALITIES)}, not {settings.get('modality')!r}")
    folder = settings.get("folder")
    if not isinstance(folder, str) or not folder.strip():
        problems.append(f"{key}.folder: must be the path of the folder holding <trial>.csv, not {folder!r}")
    columns = settings.get("columns")
    if not isinstance(columns, list) or not columns:
        problems.append(f"{key}.columns: must be a non-empty list of column names or fnmatch patterns "
                        f"(e.g. [\"AU*_r\"]), not {columns!r}")
    else:
        for i, pattern in enumerate(columns):
            if not isinstance(pattern, str) or not pattern.strip():
                problems.append(f"{key}.columns[{i}]: must be a non-empty string, not {pattern!r}")
    layout = settings.get("layout", DEFAULTS["layout"])
    if layout not in LAYOUTS:
        problems.append(f"{key}.layout: must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    fill = settings.get("fill", DEFAULTS["fill"])
    if fill not in FILLS:
        problems.append(f"{key}.fill: must be one of {', '.join(FILLS)}, not {fill!r}")
    tolerance = settings.get("tolerance", DEFAULTS["tolerance"])
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        problems.append(f"{key}.tolerance: must be a whole number of frames >= 0, not {tolerance!r}")
    return problems


def resolved_settings(name: str, settings: dict) -> dict:
    """The settings with their defaults; ``ExternalFeatureError`` listing every problem."""
    problems = validate_settings(name, settings)
    if problems:
        raise ExternalFeatureError("; ".join(problems))
    return {**DEFAULTS, **settings}


def csv_path(settings: dict, trial: str) -> Path:
    """The trial's CSV: ``<folder>/<trial>.csv`` (a relative folder is relative to the
    workflow's working directory)."""
    return Path(settings["folder"]).expanduser() / f"{trial}.csv"


# --- reading -----------------------------------------------------------------------------

def detect_layout(header: list[str]) -> str:
    names = set(header)
    if all(c in names for c in OPENFACE_MARKERS):
        return "openface"
    if "frame" in names and all(c in names for c in PYFEAT_FACE_BOX):
        return "pyfeat"
    return "plain"


def select_columns(header: list[str], patterns: list[str], where: str) -> list[str]:
    """Columns matched by the patterns, pattern by pattern, each in file order; a column
    matched twice is kept once, where first matched. A pattern matching nothing fails."""
    selected: list[str] = []
    for pattern in patterns:
        matched = [c for c in header if fnmatchcase(c, pattern)]
        if not matched:
            shown = ", ".join(header[:40]) + (f", ... ({len(header)} columns)" if len(header) > 40 else "")
            raise ExternalFeatureError(f"{where}, line 1 (header): no column matches '{pattern}' "
                                       f"(patterns are fnmatch, case-sensitive); columns: {shown}")
        selected += [c for c in matched if c not in selected]
    return selected


def _number(cell: str) -> float:
    return float(cell.strip())


def _is_missing(cell: str) -> bool:
    text = cell.strip().lower()
    return text in ("", "nan", "-nan", "na", "n/a", "null", "none")


def _frame_number(cell: str, where: str, line: int) -> int:
    try:
        value = _number(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise ExternalFeatureError(f"{where}, line {line}, column 'frame': {cell.strip()!r} is not a frame number")
    return int(value)


def read_rows(lines: Iterable[str], settings: dict, n_frames: int, where: str,
              key: str = "features.external.<stream>") -> dict:
    """Parse the CSV (``lines``: a text file opened with ``newline=""``, or a list of
    lines) and match its rows to frames 0..n_frames-1 (see the module's doc); ``where``
    starts every error message, ``key`` is the stream's config key."""
    reader = csv.reader(lines)
    header_row = next(reader, None)
    if not header_row or not any(c.strip() for c in header_row):
        raise ExternalFeatureError(f"{where}, line 1: no header (an empty file?)")
    header = [c.strip() for c in header_row]
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        raise ExternalFeatureError(f"{where}, line 1: one column '{header[0][:60]}'; the file must be "
                                   f"comma-separated")
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in seen:
            raise ExternalFeatureError(f"{where}, line 1 (header): column '{name}' appears twice "
                                       f"(columns {seen[name] + 1} and {i + 1})")
        seen[name] = i
    layout = settings["layout"] if settings["layout"] != "auto" else detect_layout(header)
    if layout in ("openface", "pyfeat") and "frame" not in seen:
        raise ExternalFeatureError(f"{where}, line 1 (header): layout '{layout}' needs a 'frame' column")
    if layout == "pyfeat" and not any(c in seen for c in PYFEAT_FACE_BOX):
        raise ExternalFeatureError(f"{where}, line 1 (header): layout 'pyfeat' needs the face-box columns "
                                   f"{', '.join(PYFEAT_FACE_BOX)} (they mark frames without a face)")
    selected = select_columns(header, settings["columns"], where)
    value_idx = [seen[c] for c in selected]
    frame_idx = seen.get("frame")
    frame_base = 1 if layout == "openface" else 0
    success_idx = seen.get("success")
    box_idx = [seen[c] for c in PYFEAT_FACE_BOX if c in seen] if layout == "pyfeat" else []
    tolerance = settings["tolerance"]

    values = np.zeros((n_frames, len(selected)), dtype=np.float64)
    has_row = np.zeros(n_frames, dtype=bool)
    valid = np.zeros(n_frames, dtype=bool)
    first_line = np.zeros(n_frames, dtype=np.int64)  # where each frame's row is, for duplicates
    n_rows = past_end = no_face = 0
    last_line = 1
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        last_line = line
        if len(row) != len(header):
            raise ExternalFeatureError(f"{where}, line {line}: {len(row)} cells, the header has {len(header)}")
        if frame_idx is None:
            frame = n_rows
        else:
            frame = _frame_number(row[frame_idx], where, line) - frame_base
            if frame < 0:
                raise ExternalFeatureError(
                    f"{where}, line {line}, column 'frame': frame {frame + frame_base} is before the first frame "
                    f"({frame_base} in layout '{layout}')")
        n_rows += 1
        if frame >= n_frames:
            if frame >= n_frames + tolerance:
                at = ", column 'frame'" if frame_idx is not None else " (row order: no 'frame' column)"
                raise ExternalFeatureError(
                    f"{where}, line {line}{at}: frame {frame + frame_base} is past the video's end "
                    f"({n_frames} frames; up to {tolerance} extra frames are dropped, {key}.tolerance): "
                    f"the CSV has more rows than the video has frames; is it another video's?")
            past_end += 1
            continue
        if has_row[frame]:
            raise ExternalFeatureError(
                f"{where}, line {line}, column 'frame': frame {frame + frame_base} again (first on line "
                f"{first_line[frame]}); one row per frame is needed (OpenFace's FaceLandmarkVidMulti and "
                f"py-feat write one row per face: keep one face per frame)")
        has_row[frame] = True
        first_line[frame] = line
        face = True
        if success_idx is not None:
            cell = row[success_idx].strip()
            try:
                success = _number(cell)
            except ValueError:
                success = math.nan
            if success not in (0.0, 1.0):
                raise ExternalFeatureError(f"{where}, line {line}, column 'success': {cell!r} is not 0 or 1")
            face = success == 1.0
        if box_idx and all(_is_missing(row[i]) for i in box_idx):
            face = False
        if not face:
            no_face += 1
            continue  # its cells are not used: no-face rows may hold NaN or placeholders
        try:
            cells = np.array([_number(row[i]) for i in value_idx], dtype=np.float64)
        except ValueError:
            cells = None
        if cells is None or not np.isfinite(cells).all():
            for i, name in zip(value_idx, selected):
                cell = row[i]
                if _is_missing(cell):
                    raise ExternalFeatureError(
                        f"{where}, line {line}, column '{name}': missing value {cell.strip()!r} in a row with a face"
                        + {"openface": " (success is 1)", "pyfeat": " (its face box is set)"}.get(
                            layout, "; mark rows without features with a 'success' column of 0"))
                try:
                    number = _number(cell)
                except ValueError:
                    raise ExternalFeatureError(
                        f"{where}, line {line}, column '{name}': {cell.strip()!r} is not a number") from None
                if not math.isfinite(number):
                    raise ExternalFeatureError(f"{where}, line {line}, column '{name}': {cell.strip()!r} is not finite")
        values[frame] = cells
        valid[frame] = True
    missing = int(n_frames - has_row.sum())
    if missing > tolerance:
        absent = np.flatnonzero(~has_row)
        shown = ", ".join(str(f + frame_base) for f in absent[:10]) + (", ..." if len(absent) > 10 else "")
        numbering = (f"numbered as in its column 'frame' (layout '{layout}')" if frame_idx is not None
                     else "0-based, by row order")
        raise ExternalFeatureError(
            f"{where}: rows for {n_frames - missing} of the video's {n_frames} frames ({n_rows} rows, the last on "
            f"line {last_line}); {missing} frames have no row (frames {shown}, {numbering}), more than the "
            f"tolerance of {tolerance} ({key}.tolerance); is the CSV another video's?")
    return {"layout": layout, "columns": selected, "values": values, "valid": valid, "n_rows": n_rows,
            "n_missing": missing, "n_no_face": no_face, "n_past_end": past_end}


def fill_invalid(values: np.ndarray, valid: np.ndarray, fill: str) -> np.ndarray:
    """Rows of frames not ``valid``: the last valid row (``carry``; leading ones the first
    valid row) or zeros (``zeros``, and always when no row is valid)."""
    out = values.copy()
    if not valid.any() or fill == "zeros":
        out[~valid] = 0.0
        return out
    source = np.where(valid, np.arange(len(valid)), -1)
    source = np.maximum.accumulate(source)  # the last valid frame at or before each frame
    source[source < 0] = np.flatnonzero(valid)[0]
    return out[source]


def first_non_utf8_line(path: Path) -> int:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the stream's extractor ----------------------------------------------------------------

def extract_external(csv_file: str | Path, faces_path: str | Path, out_path: str | Path, settings: dict,
                     *, stream: str) -> dict:
    """Write ``out_path`` from the trial's CSV on the frame clock of ``faces_path``."""
    import torch

    from vafusion.features.common import FeatureFile, provenance

    settings = resolved_settings(stream, settings)
    path = Path(csv_file)
    where = f"features.external.{stream}: {path}"
    if not path.is_file():
        raise ExternalFeatureError(f"features.external.{stream}: no CSV for this trial: {path} is missing "
                                   f"(every trial needs <folder>/<trial>.csv)")
    with h5py.File(faces_path, "r") as faces:
        timestamps = faces["timestamps"][:]
    digest = sha256_file(path)  # streamed: OpenFace files of long videos reach hundreds of MB
    with open(path, encoding="utf-8-sig", newline="") as text:
        try:
            rows = read_rows(text, settings, len(timestamps), where, f"features.external.{stream}")
        except UnicodeDecodeError:
            raise ExternalFeatureError(f"{where}, line {first_non_utf8_line(path)}: not UTF-8 text") from None
    features = fill_invalid(rows["values"], rows["valid"], settings["fill"]).astype(np.float32)
    counts = {"n_csv_rows": rows["n_rows"], "n_frames": len(timestamps), "n_frames_without_row": rows["n_missing"],
              "n_rows_without_face": rows["n_no_face"], "n_frames_filled": int((~rows["valid"]).sum()),
              "n_rows_past_end": rows["n_past_end"]}
    weights_info = {"weights": f"external CSV {path}", "weights_sha256": digest, "weights_seed": -1}
    attrs = provenance("external", settings, weights_info, device=torch.device("cpu"))
    attrs.update({"stream": stream, "columns": json.dumps(rows["columns"]), "csv_layout": rows["layout"],
                  "fill": settings["fill"], **counts})
    with FeatureFile(out_path, timestamps, len(rows["columns"]), attrs) as out:
        out.h5.create_dataset("valid", data=rows["valid"])
        if len(features):
            out.write(0, features)
    if not rows["valid"].any():
        log.warning("%s: no row with a face in any of its %d frames: the features are all zeros", where,
                    len(timestamps))
    elif counts["n_frames_filled"]:
        log.warning("%s: %d of %d frames filled (%s): %d without a row, %d rows without a face", where,
                    counts["n_frames_filled"], len(timestamps), settings["fill"], rows["n_missing"], rows["n_no_face"])
    log.info("%s: %d columns (%s layout) x %d frames -> %s", where, len(rows["columns"]), rows["layout"],
             len(timestamps), out_path)
    return {**counts, "columns": rows["columns"], "layout": rows["layout"]}


def extract(job) -> None:
    """The extractor of every ``features.external`` stream (``vafusion.features.registry``)."""
    if not job.csv or not job.faces:
        raise ExternalFeatureError(f"features.external.{job.stream}: the job needs the trial's CSV and faces file "
                                   f"(got csv={job.csv!r}, faces={job.faces!r})")
    extract_external(job.csv, job.faces, job.output, job.settings, stream=job.stream)
