"""The audio features of silence, for the missing-audio experiment.

Praveen & Alam (Sec. 4C) replace the audio input by zeros. Our models see features, not
waveforms, so a dropped audio frame gets what the extractors compute for an all-zero
waveform: the real MFCC and VGGish code (same settings, same weights) run on a few
seconds of digital silence, and the row of a frame whose whole analysis window is silent
is kept. Computed once per run (``features/silence.h5``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from vafusion.features.mfcc import MfccParams, extract_mfcc
from vafusion.features.vggish import VggishParams, extract_vggish
from vafusion.io import atomic_output

SECONDS = 3.0  # longer than VGGish's 0.96 s example, so the middle frame hears silence only
FPS = 25.0


def silence_features(out_path: str | Path, mfcc: MfccParams, vggish: VggishParams, *, weights: str | None,
                     pca_weights: str | None = None, device: str = "auto", threads: int = 1, seed: int = 0) -> dict:
    """Write ``out_path`` with ``mfcc`` (39,) and ``vggish`` (128,): the features of a frame
    in the middle of an all-zero waveform, and the extractors' provenance."""
    times = np.arange(int(SECONDS * FPS)) / FPS
    middle = len(times) // 2
    meta = {"frame_times": times.tolist(), "audio_start_s": 0.0, "audio_missing": True}
    rows, attrs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "silence.wav"
        sf.write(wav, np.zeros(int(SECONDS * mfcc.sample_rate), np.int16), mfcc.sample_rate, subtype="PCM_16")
        extract_mfcc(str(wav), meta, f"{tmp}/mfcc.h5", mfcc)
        extract_vggish(str(wav), meta, f"{tmp}/vggish.h5", vggish, weights=weights, pca_weights=pca_weights,
                       device=device, threads=threads, seed=seed)
        for name in ("mfcc", "vggish"):
            with h5py.File(f"{tmp}/{name}.h5") as h5:
                rows[name] = h5["features"][middle]
                attrs[name] = json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()},
                                         default=str)
    with atomic_output(out_path) as tmp_out, h5py.File(tmp_out, "w") as h5:
        for name, row in rows.items():
            h5.create_dataset(name, data=row.astype(np.float32))
            h5.attrs[f"{name}_provenance"] = attrs[name]
        h5.attrs["what"] = f"features of frame {middle} of {SECONDS:g} s of all-zero audio at {mfcc.sample_rate} Hz"
    return rows


def read_silence(path: str | Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as h5:
        return {name: h5[name][:] for name in ("mfcc", "vggish")}
