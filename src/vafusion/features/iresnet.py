"""IResNet-50 face embeddings, one 512-d vector per video frame of a trial.

Faces are read from the media stage's HDF5 (one JPEG per frame) and decoded a batch at a
time by a background thread, so reading overlaps with compute and memory is bounded by the
batch. On CUDA the JPEGs are decoded on the GPU (nvJPEG, one batched call): one CPU core
decodes about 11,000 faces/s (make bench), so at the 10,000 faces/s a GPU is sized for, the
reading thread (which also reads the HDF5) would hold the GPU back. On CUDA the network runs
under bf16 autocast; on the CPU in float32, channels-last, in inference mode.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import h5py
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from vafusion.devices import resolve_device
from vafusion.faces import FaceJpegs, decode_faces
from vafusion.features.common import FeatureFile, map_blocks, provenance, set_cpu_threads
from vafusion.jobs import Progress
from vafusion.models.iresnet import iresnet50, normalize_faces
from vafusion.weights import load_weights

log = logging.getLogger(__name__)
EMBEDDING_SIZE = 512


@dataclass(frozen=True)
class IresnetParams:
    batch_size: int = 16  # fastest on a 2-core CPU (make bench); raise it on a GPU
    channels_last: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def build_iresnet50(weights: str | None, device: torch.device, channels_last: bool, seed: int = 0):
    model = iresnet50()
    info = load_weights(model, weights, what="iresnet50", seed=seed)
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, info


def embed_faces(model: torch.nn.Module, faces_uint8: torch.Tensor, device: torch.device,
                channels_last: bool) -> torch.Tensor:
    """(N, 112, 112, 3) uint8 -> (N, 512) float32 embeddings."""
    x = normalize_faces(faces_uint8.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(x).float()


def face_decode_device(device: torch.device) -> torch.device:
    """Where the faces' JPEGs are decoded: on the GPU the network runs on, else the CPU."""
    return device if device.type == "cuda" else torch.device("cpu")


def decode_faces_torchvision(encoded: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """JPEGs -> (N, 112, 112, 3) uint8 RGB on ``device``, in one batched torchvision call
    (nvJPEG on CUDA). The result is made on this thread's current stream, which torchvision
    makes wait for its decoding stream; it is the default stream, the network's too."""
    chw = decode_jpeg([torch.from_numpy(data) for data in encoded], mode=ImageReadMode.RGB, device=device)
    return torch.stack(chw).permute(0, 2, 3, 1)


def read_faces(encoded: Sequence[np.ndarray], decode_on: torch.device) -> torch.Tensor:
    """(N, 112, 112, 3) uint8 RGB faces on ``decode_on`` (see ``face_decode_device``)."""
    if decode_on.type == "cuda":
        return decode_faces_torchvision(encoded, decode_on)
    return torch.from_numpy(decode_faces(encoded))


def extract_iresnet50(faces_path: str, out_path: str, params: IresnetParams, *, weights: str | None,
                      device: str = "auto", threads: int = 1, seed: int = 0) -> None:
    """Write ``out_path``: (T, 512) embeddings + the trial's ``face_found`` mask."""
    dev = resolve_device(device)
    set_cpu_threads(threads)
    model, weights_info = build_iresnet50(weights, dev, params.channels_last, seed)
    decode_on = face_decode_device(dev)
    with h5py.File(faces_path, "r") as src:
        faces, times, found = FaceJpegs(src), src["timestamps"][:], src["face_found"][:]
        attrs = provenance("iresnet50", {**params.as_dict(), "input": "112x112 RGB, (x/255-0.5)/0.5"}, weights_info, dev)
        attrs["faces_source"] = src.attrs.get("source", "")
        attrs["faces_decoded_on"] = str(decode_on)

        def read(lo: int, hi: int) -> torch.Tensor:
            return read_faces(faces[lo:hi], decode_on)

        with FeatureFile(out_path, times, EMBEDDING_SIZE, attrs) as out, torch.inference_mode():
            out.h5.create_dataset("face_found", data=found)
            progress = Progress(f"iresnet50 of {faces_path}", len(times), "faces")
            for start, batch in map_blocks(len(times), params.batch_size, read):
                out.write(start, embed_faces(model, batch, dev, params.channels_last).cpu().numpy())
                progress.update(start + len(batch))
    if not found.any():
        log.warning("%s: no face in any frame; embeddings of blank frames, face_found all false", faces_path)
    log.info("iresnet50: %d faces -> %s (%s)", len(times), out_path, weights_info["weights"])


def extract(job) -> None:
    """The ``iresnet50`` stream's extractor (``vafusion.features.registry``)."""
    extract_iresnet50(job.faces, job.output, IresnetParams(**job.settings), weights=job.weights.get("iresnet50"),
                      device=job.device, threads=job.threads, seed=job.seed)
