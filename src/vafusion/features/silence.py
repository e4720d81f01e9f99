"""What a dropped audio frame is given in the missing-audio experiment, in two forms.

Praveen & Alam (Sec. 4C): "the audio modality (spectrograms) is dropped ... replaced by
zeros", i.e. zeros at the audio networks' input. Our models see features, so:

- ``zeros`` (the paper's, the default): what the audio features are when the networks'
  input is zero. VGGish's input is a log-mel example: the network (same settings, same
  weights) embeds an all-zero (1, 96, 64) example. MFCC is itself the model's input, so
  its row is all zeros.
- ``silence``: what the extractors compute for an all-zero waveform: the real MFCC and
  VGGish code run on a few seconds of digital silence, and the row of a frame whose whole
  analysis window is silent is kept (MFCC of a floored log spectrum, VGGish of
  log(0.01)). This is what a recording with the sound cut off gives.

For a stream of another kind (``Stream.zeros`` in ``vafusion.features.registry``): a
hand-crafted feature that is itself the model's input (eGeMAPS, an external CSV) gets an
all-zero row as ``zeros``; a network whose input is the waveform (wav2vec2, HuBERT, WavLM)
gets its silence row, since zeros at its input are digital silence.

Both are computed once per run and audio stream (``features/fills/<stream>.h5``, a dataset
per fill) and the training picks one (``learning.train.missing_audio.fill``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from vafusion.features.registry import ExtractJob, Stream
from vafusion.io import atomic_output

FILLS = ("zeros", "silence")
SECONDS = 3.0  # longer than VGGish's 0.96 s example and eGeMAPS' 1 s window: the middle frame hears silence only
FPS = 25.0


def fill_features(out_path: str | Path, stream: Stream, job: ExtractJob,
                  example: str | Path | None = None) -> dict[str, np.ndarray]:
    """Write ``out_path`` with one (D,) dataset per fill (``FILLS``) for the audio ``stream``,
    computed by its own extractor with ``job``'s settings, weights and device (``job.wav``,
    ``job.meta`` and ``job.output`` are set here), and the extractor's provenance.

    A stream imported from CSV files (``source`` "csv") cannot be computed on silence:
    both its fills are all-zero rows (said in the file), as wide as the feature file
    ``example``."""
    if stream.source == "faces" or stream.modality != "audio":
        raise ValueError(f"stream '{stream.name}' is not an audio stream: it has no missing-audio fill")
    times = np.arange(int(SECONDS * FPS)) / FPS
    middle = len(times) // 2
    meta = {"frame_times": times.tolist(), "audio_start_s": 0.0, "audio_missing": True, "video_fps": FPS,
            "sample_rate": int(job.settings.get("sample_rate", 16000))}
    fills: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if stream.source == "wav":
            wav = Path(tmp) / "silence.wav"
            sf.write(wav, np.zeros(int(SECONDS * meta["sample_rate"]), np.int16), meta["sample_rate"],
                     subtype="PCM_16")
            silent = dataclasses.replace(job, wav=str(wav), meta=meta, output=f"{tmp}/features.h5")
            stream.extractor()(silent)
            with h5py.File(silent.output) as h5:
                fills["silence"] = h5["features"][middle]
                provenance = json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()},
                                        default=str)
        else:  # features made elsewhere: silence cannot be computed here, zeros stand in
            with h5py.File(example) as h5:
                fills["silence"] = np.zeros(h5["features"].shape[1], np.float32)
            provenance = json.dumps({"extractor": stream.name, "source": stream.source,
                                     "silence": "unknown for features made elsewhere: an all-zero row"})
    if stream.zeros == "network":
        fills["zeros"] = np.asarray(importlib.import_module(stream.module).zero_input_row(job), np.float32)
    elif stream.zeros == "silence" and "silence" in fills:
        fills["zeros"] = fills["silence"]
    elif stream.zeros == "row" and "silence" in fills:
        fills["zeros"] = np.zeros_like(fills["silence"])
    else:
        raise ValueError(f"stream '{stream.name}': no missing-audio fill can be computed for it (zeros='{stream.zeros}', "
                         f"source '{stream.source}')")
    with atomic_output(out_path) as tmp_out, h5py.File(tmp_out, "w") as h5:
        for fill, row in fills.items():
            h5.create_dataset(fill, data=np.asarray(row, np.float32))
        h5.attrs["stream"] = stream.name
        h5.attrs["provenance"] = provenance
        h5.attrs["zeros"] = {"row": "an all-zero row (the features are the model's input)",
                             "silence": "the features of silence (zeros at the network's waveform input)",
                             "network": "the network's output for an all-zero input of its own"}[stream.zeros]
        h5.attrs["silence"] = (f"features of frame {middle} of {SECONDS:g} s of all-zero audio at "
                               f"{meta['sample_rate']} Hz")
    return fills


def read_fill(paths: dict[str, str | Path], fill: str) -> dict[str, np.ndarray]:
    """The row that replaces a dropped frame with ``fill`` (one of ``FILLS``), per audio
    stream (``paths``: stream -> its fills file)."""
    if fill not in FILLS:
        raise ValueError(f"unknown missing-audio fill '{fill}'; known: {', '.join(FILLS)}")
    rows = {}
    for stream, path in paths.items():
        with h5py.File(path) as h5:
            if fill not in h5:
                raise ValueError(f"{path}: has no '{fill}' fill (written by an older vafusion); rerun fill_features")
            rows[stream] = h5[fill][:]
    return rows
