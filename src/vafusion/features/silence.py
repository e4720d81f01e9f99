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

Both are computed once per run (``features/silence.h5``, a group per fill) and the
training picks one (``learning.train.missing_audio.fill``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch

from vafusion.devices import resolve_device
from vafusion.features.mfcc import MfccParams, extract_mfcc
from vafusion.features.vggish import EXAMPLE_FRAMES, N_MELS, VggishEmbedder, VggishParams, extract_vggish
from vafusion.io import atomic_output

FILLS = ("zeros", "silence")
SECONDS = 3.0  # longer than VGGish's 0.96 s example, so the middle frame hears silence only
FPS = 25.0


def silence_features(out_path: str | Path, mfcc: MfccParams, vggish: VggishParams, *, weights: str | None,
                     pca_weights: str | None = None, device: str = "auto", threads: int = 1,
                     seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Write ``out_path`` with a group per fill (``FILLS``), each with ``mfcc`` (39,) and
    ``vggish`` (128,), and the extractors' provenance."""
    times = np.arange(int(SECONDS * FPS)) / FPS
    middle = len(times) // 2
    meta = {"frame_times": times.tolist(), "audio_start_s": 0.0, "audio_missing": True}
    fills: dict[str, dict[str, np.ndarray]] = {"zeros": {}, "silence": {}}
    attrs = {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "silence.wav"
        sf.write(wav, np.zeros(int(SECONDS * mfcc.sample_rate), np.int16), mfcc.sample_rate, subtype="PCM_16")
        extract_mfcc(str(wav), meta, f"{tmp}/mfcc.h5", mfcc)
        extract_vggish(str(wav), meta, f"{tmp}/vggish.h5", vggish, weights=weights, pca_weights=pca_weights,
                       device=device, threads=threads, seed=seed)
        for name in ("mfcc", "vggish"):
            with h5py.File(f"{tmp}/{name}.h5") as h5:
                fills["silence"][name] = h5["features"][middle]
                attrs[name] = json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()},
                                         default=str)
    fills["zeros"]["mfcc"] = np.zeros_like(fills["silence"]["mfcc"])
    embed = VggishEmbedder(vggish, weights=weights, pca_weights=pca_weights, device=resolve_device(device), seed=seed)
    fills["zeros"]["vggish"] = embed(torch.zeros(1, 1, EXAMPLE_FRAMES, N_MELS))[0]
    with atomic_output(out_path) as tmp_out, h5py.File(tmp_out, "w") as h5:
        for fill, rows in fills.items():
            group = h5.create_group(fill)
            for name, row in rows.items():
                group.create_dataset(name, data=row.astype(np.float32))
        for name, text in attrs.items():
            h5.attrs[f"{name}_provenance"] = text
        h5.attrs["zeros"] = ("mfcc: all-zero rows (MFCC is the model's input); vggish: the network's embedding of an "
                             f"all-zero ({EXAMPLE_FRAMES}, {N_MELS}) log-mel example")
        h5.attrs["silence"] = (f"features of frame {middle} of {SECONDS:g} s of all-zero audio at "
                               f"{mfcc.sample_rate} Hz")
    return fills


def read_fill(path: str | Path, fill: str) -> dict[str, np.ndarray]:
    """The audio features that replace a dropped frame with ``fill`` (one of ``FILLS``)."""
    if fill not in FILLS:
        raise ValueError(f"unknown missing-audio fill '{fill}'; known: {', '.join(FILLS)}")
    with h5py.File(path) as h5:
        if fill not in h5:
            raise ValueError(f"{path}: has no '{fill}' group (written by an older vafusion); rerun silence_features")
        return {name: h5[fill][name][:] for name in ("mfcc", "vggish")}
