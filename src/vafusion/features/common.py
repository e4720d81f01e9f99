"""What the three feature extractors share: the HDF5 layout with provenance, reading audio
segments, and a background prefetcher that overlaps input preparation with compute."""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import h5py
import numpy as np
import soundfile as sf
import torch

import vafusion
from vafusion.devices import cuda_status
from vafusion.io import atomic_output

log = logging.getLogger(__name__)
T = TypeVar("T")
TIME_CHUNK = 256  # HDF5 chunk along time: windows of a few hundred frames read few chunks


def set_cpu_threads(threads: int) -> None:
    torch.set_num_threads(max(1, int(threads)))


def provenance(extractor: str, params: dict, weights: dict | None, device: torch.device) -> dict:
    """Attributes stored in every feature file: what made it, with what, from what."""
    import torchaudio

    attrs = {
        "extractor": extractor,
        "params": json.dumps(params, sort_keys=True),
        "vafusion_version": vafusion.__version__,
        "torch_version": torch.__version__,
        "torchaudio_version": torchaudio.__version__,
        "device": str(device),
        "cuda_status": cuda_status()[1],  # why this device: a GPU present but unusable says so here
    }
    attrs.update(weights or {"weights": "none (no network)", "weights_sha256": "", "weights_seed": -1})
    return attrs


class FeatureFile:
    """Writes ``features`` (T x D float32, uncompressed, chunked along time), the frame
    ``timestamps`` and provenance attributes; atomically (renamed into place on close)."""

    def __init__(self, path: str | Path, timestamps: np.ndarray, dim: int, attrs: dict):
        self._atomic = atomic_output(path)
        tmp = self._atomic.__enter__()
        self.h5 = h5py.File(tmp, "w")
        n = len(timestamps)
        self.features = self.h5.create_dataset(
            "features", shape=(n, dim), dtype=np.float32, chunks=(max(1, min(TIME_CHUNK, n)), dim) if n else None)
        self.h5.create_dataset("timestamps", data=np.asarray(timestamps, dtype=np.float64))
        # str() because some version strings are str subclasses h5py cannot store
        self.h5.attrs.update({k: str(v) if isinstance(v, str) else v for k, v in attrs.items()})

    def write(self, start: int, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():
            raise FloatingPointError(f"non-finite features in frames {start}..{start + len(block) - 1}")
        self.features[start:start + len(block)] = block

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.h5.close()
        self._atomic.__exit__(exc_type, exc, tb)
        return False


def read_audio_segment(wav: sf.SoundFile, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) as float32 mono; zeros where the range leaves the file
    (before its start, or past its end: a WAV shorter than the video is padded)."""
    out = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, wav.frames)
    if hi > lo:
        wav.seek(lo)
        data = wav.read(hi - lo, dtype="float32", always_2d=True)
        out[lo - start:lo - start + len(data)] = data.mean(axis=1)
    return out


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` produced by a background thread, ``depth`` ahead, so that reading
    and preparing the next batch overlaps with computing the current one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            failure.append(err)
        finally:
            q.put(done)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)
    if failure:
        raise failure[0]


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def map_blocks(n: int, size: int, prepare: Callable[[int, int], T]) -> Iterator[tuple[int, T]]:
    """(start, prepare(start, stop)) for consecutive blocks, prepared one block ahead."""
    return prefetch((start, prepare(start, stop)) for start, stop in blocks(n, size))
