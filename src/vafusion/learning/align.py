"""Alignment of a trial's features to its annotation.

T is the number of annotation rows (train/validation) or the number of video frames (test
trials). Each feature sequence is trimmed from the rear when longer, or padded by
repeating its last row when shorter. Frames are never dropped: row k stays frame k, and
unannotated (-5) frames are only masked, per target.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from vafusion.annotations import INVALID, TARGETS
from vafusion.io import atomic_output

log = logging.getLogger(__name__)
# an aligned file's datasets that are not feature streams
LABEL_DATASETS = (*TARGETS, *(f"valid_{t}" for t in TARGETS), "face_found")


def _plain(value):
    """An HDF5 attribute as JSON can hold it: numpy arrays as lists, numpy scalars unwrapped."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if hasattr(value, "item") else value


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Trim rows from the rear, or pad by repeating the last row, to ``length`` rows."""
    if len(x) >= length:
        return x[:length]
    if len(x) == 0:
        raise ValueError("cannot pad an empty sequence")
    return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)])


def write_aligned(out_path: str | Path, streams: dict[str, np.ndarray], values: dict[str, np.ndarray],
                  face_found: np.ndarray, attrs: dict) -> None:
    """The aligned file: one (T, D) float32 dataset per stream, labels and masks on T rows.

    The datasets are contiguous and uncompressed on purpose: training reads its windows
    straight from the file at the dataset's byte offset (``vafusion.learning.data``)."""
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as h5:
        for name, x in streams.items():
            h5.create_dataset(name, data=np.asarray(x, np.float32), chunks=None)
        for target in TARGETS:
            h5.create_dataset(target, data=values[target].astype(np.float32))
            h5.create_dataset(f"valid_{target}", data=values[target] != INVALID)
        h5.create_dataset("face_found", data=face_found)
        h5.attrs.update(attrs)


def align_trial(out_path: str | Path, *, trial: str, partition: str, features: dict[str, str | Path],
                faces: str | Path, audio_meta: str | Path, labels: str | Path | None) -> dict:
    """Write ``out_path`` with the trial's ``features`` (stream name -> feature file: every
    stream some configured model fuses), labels and masks on T rows. ``faces``: the trial's
    faces file, whose frames are the video's and which says where a face was found."""
    meta = json.loads(Path(audio_meta).read_text())
    with h5py.File(faces) as h5:
        face_found = h5["face_found"][:]
    n_video = len(face_found)
    streams, provenance = {}, {}
    for name, path in features.items():
        with h5py.File(path) as h5:
            streams[name] = h5["features"][:]
            # what made the features, kept for training's record (vafusion.learning.provenance)
            provenance[f"{name}_provenance"] = json.dumps({k: _plain(v) for k, v in h5.attrs.items()}, sort_keys=True,
                                                          default=str)
        if len(streams[name]) != n_video:  # every stream is on the video's frame clock
            raise ValueError(f"{path}: {len(streams[name])} rows of {name} features for a video of {n_video} frames "
                             f"({faces}); rerun its extraction")
    if labels is not None:
        with h5py.File(labels) as h5:
            values = {t: h5[t][:] for t in TARGETS}
        length = len(values["valence"])
    else:
        length = n_video
        values = {t: np.full(length, INVALID, np.float32) for t in TARGETS}
    if length != n_video:
        log.info("%s: %d annotation rows, %d video frames: features %s", trial, length, n_video,
                 "trimmed from the rear" if n_video > length else "padded with their last row")
    found = np.zeros(length, dtype=bool)
    found[:min(length, n_video)] = face_found[:length]  # padded rows have no face
    write_aligned(out_path, {name: fit_length(x, length) for name, x in streams.items()}, values, found,
                  {"trial": trial, "partition": partition, "fps": float(meta["video_fps"]),
                   "audio_missing": bool(meta["audio_missing"]), "n_video_frames": n_video, "n_frames": length,
                   **provenance})
    valid = {t: int((values[t] != INVALID).sum()) for t in TARGETS}
    if labels is not None and not any(valid.values()):
        log.warning("%s: every annotation row is -5: the trial is left out of training", trial)
    return {"trial": trial, "n_frames": length, "n_video_frames": n_video, **{f"valid_{t}": v for t, v in valid.items()}}
