"""Aligned trials in memory, feature normalisation, and fixed-length training windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from vafusion.learning.align import STREAMS


@dataclass
class TrialData:
    name: str
    streams: dict[str, np.ndarray]  # name -> (T, D) float32
    labels: np.ndarray  # (T, 2) valence, arousal (-5 where unannotated)
    valid: np.ndarray  # (T, 2) bool

    @property
    def length(self) -> int:
        return len(self.labels)


def load_trial(path: str | Path) -> TrialData:
    with h5py.File(path) as h5:
        return TrialData(
            name=str(h5.attrs["trial"]),
            streams={s: h5[s][:] for s in STREAMS},
            labels=np.stack([h5["valence"][:], h5["arousal"][:]], axis=1),
            valid=np.stack([h5["valid_valence"][:], h5["valid_arousal"][:]], axis=1),
        )


def stream_dims(trial: TrialData) -> dict[str, int]:
    return {s: int(x.shape[1]) for s, x in trial.streams.items()}


class Normalizer:
    """Per-dimension standardisation of each stream, fitted on training trials only."""

    def __init__(self, mean: dict[str, np.ndarray], std: dict[str, np.ndarray]):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, trials: list[TrialData]) -> "Normalizer":
        mean, std = {}, {}
        for s in STREAMS:
            x = np.concatenate([t.streams[s] for t in trials]).astype(np.float64)
            mean[s] = x.mean(axis=0).astype(np.float32)
            std[s] = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)  # constant dims stay 0
        return cls(mean, std)

    def apply(self, trial: TrialData) -> TrialData:
        streams = {s: (x - self.mean[s]) / self.std[s] for s, x in trial.streams.items()}
        return TrialData(trial.name, streams, trial.labels, trial.valid)

    def state(self) -> dict:
        return {"mean": {k: torch.from_numpy(v) for k, v in self.mean.items()},
                "std": {k: torch.from_numpy(v) for k, v in self.std.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        return cls({k: v.numpy() for k, v in state["mean"].items()}, {k: v.numpy() for k, v in state["std"].items()})


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


def make_batch(items: list[tuple[TrialData, int]], window: int) -> Batch:
    """Cut ``window`` frames from each (trial, start); pad short ones and mask them."""
    b = len(items)
    first = items[0][0]
    streams = {s: np.zeros((b, window, x.shape[1]), np.float32) for s, x in first.streams.items()}
    labels = np.zeros((b, window, 2), np.float32)
    valid = np.zeros((b, window, 2), bool)
    padding = np.ones((b, window), bool)
    for i, (trial, start) in enumerate(items):
        stop = min(start + window, trial.length)
        n = stop - start
        for s, x in trial.streams.items():
            streams[s][i, :n] = x[start:stop]
        labels[i, :n] = trial.labels[start:stop]
        valid[i, :n] = trial.valid[start:stop]
        padding[i, :n] = False
    return Batch({k: torch.from_numpy(v) for k, v in streams.items()}, torch.from_numpy(labels),
                 torch.from_numpy(valid), torch.from_numpy(padding))
