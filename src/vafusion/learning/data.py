"""Aligned trials, feature normalisation, and fixed-length training windows.

Training never holds the dataset: ``StoredTrial`` keeps a trial's labels (a few bytes per
frame) and where its feature rows sit in the aligned file, and each window is read from
there when its batch is made (``os.pread`` at the dataset's byte offset). Repeated reads
come from the page cache, which all training jobs on a machine share; a job's own memory
stays flat in the size of the data. Validation and test trials are loaded one at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch

from vafusion.learning.align import LABEL_DATASETS
log = logging.getLogger(__name__)


@dataclass
class TrialData:
    name: str
    streams: dict[str, np.ndarray]  # name -> (T, D) float32
    labels: np.ndarray  # (T, 2) valence, arousal (-5 where unannotated)
    valid: np.ndarray  # (T, 2) bool

    @property
    def length(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {s: x[start:stop] for s, x in self.streams.items()}


@dataclass
class StoredTrial:
    """An aligned trial whose features stay in its file: labels in memory, feature rows
    read on demand."""

    name: str
    path: Path
    layout: dict[str, tuple[int, int]]  # stream -> (byte offset of the (T, D) float32 rows, D)
    labels: np.ndarray  # (T, 2)
    valid: np.ndarray  # (T, 2) bool
    # frames (T,) bool whose rows of some streams read as fill rows ({stream: (D,)}): the
    # unvoiced frames' audio (``with_unvoiced_filled``); None: the rows as stored
    filled: tuple[np.ndarray, dict[str, np.ndarray]] | None = None

    @property
    def length(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Raw feature rows [start, stop) of every stream."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            out = {}
            for s, (offset, dim) in self.layout.items():
                x = np.empty((stop - start, dim), np.float32)
                got = os.preadv(fd, [x], offset + start * dim * 4)
                if got != x.nbytes:
                    raise OSError(f"{self.path}: {s} rows {start}..{stop} ended early (file changed?)")
                out[s] = x
        finally:
            os.close(fd)
        if self.filled is not None:
            frames, fill = self.filled
            for s, row in fill.items():
                out[s][frames[start:stop]] = row
        return out

    def load(self) -> TrialData:
        return TrialData(self.name, self.rows(0, self.length), self.labels, self.valid)


def _missing_streams(h5: h5py.File, streams: Iterable[str]) -> None:
    if missing := [s for s in streams if s not in h5]:
        raise ValueError(f"{h5.filename}: holds no {', '.join(missing)} features (aligned for other streams); "
                         "rerun align_trial")


def aligned_streams(h5: h5py.File) -> list[str]:
    """The feature streams an aligned file holds: its datasets other than labels and masks."""
    return [name for name in h5 if name not in LABEL_DATASETS]


def open_trial(path: str | Path, streams: Iterable[str] | None = None) -> StoredTrial:
    """Labels and the layout of the ``streams`` (default: all) in an aligned file (``write_aligned``)."""
    path = Path(path)
    with h5py.File(path) as h5:
        streams = aligned_streams(h5) if streams is None else list(streams)
        _missing_streams(h5, streams)
        layout = {}
        for s in streams:
            ds = h5[s]
            offset = ds.id.get_offset()
            if ds.dtype != np.float32 or ds.chunks is not None or ds.compression or (offset is None and ds.size):
                raise ValueError(f"{path}: '{s}' is not a contiguous float32 dataset; rerun align_trial")
            layout[s] = (int(offset or 0), int(ds.shape[1]))
        return StoredTrial(name=str(h5.attrs["trial"]), path=path, layout=layout,
                           labels=np.stack([h5["valence"][:], h5["arousal"][:]], axis=1),
                           valid=np.stack([h5["valid_valence"][:], h5["valid_arousal"][:]], axis=1))


def load_trial(path: str | Path, streams: Iterable[str] | None = None) -> TrialData:
    """An aligned trial in memory: its ``streams`` (default: all), labels and masks."""
    with h5py.File(path) as h5:
        streams = aligned_streams(h5) if streams is None else list(streams)
        _missing_streams(h5, streams)
        return TrialData(
            name=str(h5.attrs["trial"]),
            streams={s: h5[s][:] for s in streams},
            labels=np.stack([h5["valence"][:], h5["arousal"][:]], axis=1),
            valid=np.stack([h5["valid_valence"][:], h5["valid_arousal"][:]], axis=1),
        )


def read_presence(path: str | Path, stream: str) -> np.ndarray:
    """(T,) the 1-d speech-presence stream ``stream`` (``speech``, ``mouth_open``) of an
    aligned file, which holds it besides the fused streams when a setting reads it."""
    with h5py.File(path) as h5:
        _missing_streams(h5, [stream])
        if h5[stream].ndim != 2 or h5[stream].shape[1] != 1:
            raise ValueError(f"{path}: '{stream}' has {h5[stream].shape[1:]} columns per frame; a speech presence "
                             "stream has one")
        return h5[stream][:, 0]


def with_unvoiced_filled(trial: StoredTrial | TrialData, voice, fill: dict[str, np.ndarray], path: str | Path):
    """The trial whose audio rows (the ``fill`` streams) of unvoiced frames (``voice``:
    ``vafusion.learning.settings.Voice``) are the fill rows, as if the audio were missing."""
    frames = read_presence(path, voice.stream) < voice.threshold
    if isinstance(trial, StoredTrial):
        return dataclasses.replace(trial, filled=(frames, dict(fill)))
    streams = dict(trial.streams)
    for s, row in fill.items():
        streams[s] = streams[s].copy()
        streams[s][frames] = row
    return TrialData(trial.name, streams, trial.labels, trial.valid)


def stream_dims(trial: TrialData | StoredTrial) -> dict[str, int]:
    if isinstance(trial, StoredTrial):
        return {s: dim for s, (_, dim) in trial.layout.items()}
    return {s: int(x.shape[1]) for s, x in trial.streams.items()}


class Normalizer:
    """Per-dimension standardisation of each stream, fitted on training trials only.

    A dimension that is constant over the training frames cannot be standardised: dividing
    by its (zero or rounding-level) spread would multiply any later variation (a dead VGGish
    unit that wakes up at validation, the zero rows of missing audio) by up to 10^6 or more.
    Such a dimension carries nothing the model could have learned from, so it is
    neutralised: it reads 0 everywhere, decided from the training statistics alone and
    recorded with the model (``constant``).

    Each dimension is judged in its own units, never against the stream's other dimensions
    (eGeMAPS mixes Hz with ratios, whose spreads differ 10^4-fold): constant means a single
    distinct value over the training frames, or a standard deviation of at most
    ``CONSTANT_SPREAD`` x max(1, |mean|), i.e. a spread below a millionth of the value's
    size (or of 1 for values under 1), which no real feature varies by.
    """

    CONSTANT_SPREAD = 1e-6

    def __init__(self, mean: dict[str, np.ndarray], std: dict[str, np.ndarray],
                 constant: dict[str, np.ndarray] | None = None):
        self.mean, self.std = mean, std
        # models saved before neutralisation floored std at 1e-6: those were the constant dims
        self.constant = constant if constant is not None else {s: v <= 1e-6 for s, v in std.items()}
        # x -> (x - mean) * scale; scale 0 on constant dims, so they read 0 whatever comes in
        self.scale = {s: np.where(self.constant[s], 0.0, 1.0 / np.where(self.constant[s], 1.0, std[s]))
                      .astype(np.float32) for s in std}

    @classmethod
    def fit(cls, trials: Iterable[TrialData | StoredTrial]) -> "Normalizer":
        """Mean and (population) std over all frames, accumulated one trial at a time in
        float64 and merged with Chan et al.'s pairwise update, so no copy of the data is made;
        the smallest and largest value per dimension tell a single distinct value."""
        count, mean, m2, low, high = 0, {}, {}, {}, {}
        for trial in trials:
            rows = trial.rows(0, trial.length)
            n = trial.length
            if n == 0:
                continue
            for s, x in rows.items():
                x = x.astype(np.float64)
                mean_t = x.mean(axis=0)
                m2_t = ((x - mean_t) ** 2).sum(axis=0)
                if count == 0:
                    mean[s], m2[s], low[s], high[s] = mean_t, m2_t, x.min(axis=0), x.max(axis=0)
                else:
                    delta = mean_t - mean[s]
                    mean[s] = mean[s] + delta * n / (count + n)
                    m2[s] = m2[s] + m2_t + delta**2 * count * n / (count + n)
                    low[s], high[s] = np.minimum(low[s], x.min(axis=0)), np.maximum(high[s], x.max(axis=0))
            count += n
        if count == 0:
            raise ValueError("no training frames to fit the feature normalisation on")
        std = {s: np.sqrt(m2[s] / count) for s in mean}
        constant = {}
        for s, sd in std.items():
            constant[s] = (low[s] == high[s]) | (sd <= cls.CONSTANT_SPREAD * np.maximum(1.0, np.abs(mean[s])))
            if constant[s].any():
                dims = np.flatnonzero(constant[s])
                log.warning("%s: %d of %d dimensions are constant over the training frames (e.g. %s); they are "
                            "neutralised (0 everywhere) instead of divided by their spread", s, len(dims), sd.size,
                            ", ".join(map(str, dims[:8])) + (" ..." if len(dims) > 8 else ""))
        return cls({s: m.astype(np.float32) for s, m in mean.items()},
                   {s: np.where(constant[s], 1.0, sd).astype(np.float32) for s, sd in std.items()}, constant)

    def normalise(self, stream: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(x - mean) * scale of one stream's rows, into ``out`` when given."""
        out = np.subtract(x, self.mean[stream], out=out)
        out *= self.scale[stream]
        return out

    def apply(self, trial: TrialData) -> TrialData:
        streams = {s: self.normalise(s, x) for s, x in trial.streams.items()}
        return TrialData(trial.name, streams, trial.labels, trial.valid)

    def state(self) -> dict:
        return {"mean": {k: torch.from_numpy(v) for k, v in self.mean.items()},
                "std": {k: torch.from_numpy(v) for k, v in self.std.items()},
                "constant": {k: torch.from_numpy(v) for k, v in self.constant.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        constant = {k: v.numpy().astype(bool) for k, v in state["constant"].items()} if "constant" in state else None
        return cls({k: v.numpy() for k, v in state["mean"].items()}, {k: v.numpy() for k, v in state["std"].items()},
                   constant)

    def summary(self) -> dict[str, int]:
        """Per stream, how many dimensions were neutralised as constant (metrics.json's
        ``normaliser_neutralised_dims``; the report counts them)."""
        return {s: int(c.sum()) for s, c in self.constant.items()}


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Starts of windows of ``window`` frames every ``hop``; the last one ends flush with
    the trial; a trial shorter than a window gets one (padded) window."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@dataclass
class Batch:
    streams: dict[str, torch.Tensor]  # (B, L, D)
    labels: torch.Tensor  # (B, L, 2)
    valid: torch.Tensor  # (B, L, 2) bool: annotated and not padding
    padding: torch.Tensor  # (B, L) bool: True where the window runs past the trial

    def to(self, device: torch.device) -> "Batch":
        return Batch({k: v.to(device, non_blocking=True) for k, v in self.streams.items()},
                     self.labels.to(device), self.valid.to(device), self.padding.to(device))


def make_batch(items: list[tuple[TrialData | StoredTrial, int]], window: int,
               normalizer: Normalizer | None = None) -> Batch:
    """Cut ``window`` frames from each (trial, start), standardised by ``normalizer`` when
    given (trials read from storage are raw); pad short ones with zeros and mask them."""
    b = len(items)
    dims = stream_dims(items[0][0])
    streams = {s: np.zeros((b, window, d), np.float32) for s, d in dims.items()}
    labels = np.zeros((b, window, 2), np.float32)
    valid = np.zeros((b, window, 2), bool)
    padding = np.ones((b, window), bool)
    for i, (trial, start) in enumerate(items):
        stop = min(start + window, trial.length)
        n = stop - start
        for s, x in trial.rows(start, stop).items():
            if normalizer is None:
                streams[s][i, :n] = x
            else:
                normalizer.normalise(s, x, out=streams[s][i, :n])
        labels[i, :n] = trial.labels[start:stop]
        valid[i, :n] = trial.valid[start:stop]
        padding[i, :n] = False
    return Batch({k: torch.from_numpy(v) for k, v in streams.items()}, torch.from_numpy(labels),
                 torch.from_numpy(valid), torch.from_numpy(padding))
