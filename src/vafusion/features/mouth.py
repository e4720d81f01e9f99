"""Mouth opening from dlib's 68 landmarks: the ``mouth_open`` stream, one value a frame.

Why: whether and how far the lips part is the visual side of speech (and of laughing,
yawning, surprise), a single interpretable number that the landmark stream holds only
spread over 136 coordinates.

What: on each aligned face, dlib's 68-point shape (``shape_predictor_68_face_landmarks.dat``,
placed exactly as the ``landmarks`` stream places it: ``vafusion.features.dlib_face``), the
inner-lip gap divided by the inter-ocular distance. The gap is the mean distance of the
three pairs of inner-lip points that face each other across the mouth, in the iBUG 300-W
markup's 0-based indices (1-based 62-68, 63-67, 64-66):

- 61 (upper lip, subject's right) with 67 (lower lip, subject's right),
- 62 (upper lip, middle) with 66 (lower lip, middle),
- 63 (upper lip, subject's left) with 65 (lower lip, subject's left);

points 60 and 64 are the inner corners, 48-59 the outer lip contour. The inter-ocular
distance is that of the eye centres (means of points 36-41 and 42-47), the ``landmarks``
stream's unit, so the value is the distance in that stream's normalised coordinates: no
unit of pixels, face size or head roll. It is about 0 with the lips shut (dlib puts the
inner points of closed lips on one line) and 0.1-0.3 for an open mouth while talking.

Frames without a face repeat the last face's value, a trial without any face gets zeros,
and ``face_found`` is copied, as in the other dlib streams (``extract_faces_stream``).
Speed: dlib's shape predictor, 1.0-1.4 ms of CPU a face (JPEG decoding included; 725-965
faces per CPU second here), as the ``landmarks`` stream: the gap itself costs nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from vafusion.features.common import provenance
from vafusion.features.dlib_face import (
    LEFT_EYE, N_POINTS, RIGHT_EYE, SHAPE_68, TEMPLATE_BOX, extract_faces_stream, landmarks_of, weights_info)

# (upper, lower) inner-lip points facing each other across the mouth: 0-based iBUG 300-W indices
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
MOUTH_DIM = 1


@dataclass(frozen=True)
class MouthParams:
    """Settings of the ``mouth_open`` stream (config.yaml ``features.mouth_open``)."""

    batch_size: int  # faces read and computed at a time (and per worker task)

    def as_dict(self) -> dict:
        return asdict(self)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(N, 136) landmarks normalised to the eyes (``dlib_face.normalise_landmarks``: inter-
    ocular distance 1) -> (N, 1): the mean inner-lip gap, in inter-ocular distances."""
    points = landmarks.reshape(len(landmarks), N_POINTS, 2)
    upper, lower = (list(side) for side in zip(*INNER_LIP_PAIRS))
    gaps = np.linalg.norm(points[:, upper] - points[:, lower], axis=-1)  # (N, 3)
    return gaps.mean(axis=1, keepdims=True)


def mouth_open_of(jpegs: Sequence[np.ndarray]) -> np.ndarray:
    """Faces as stored (JPEGs) -> (N, 1) mouth opening."""
    return mouth_opening(landmarks_of(jpegs))


def extract_mouth_open(faces_path: str, out_path: str, params: MouthParams, threads: int = 1) -> None:
    """Write ``out_path``: (T, 1) mouth opening of the trial's faces, + ``face_found``."""
    right, left = RIGHT_EYE, LEFT_EYE
    params_record = {**params.as_dict(), "box": list(TEMPLATE_BOX), "points": "iBUG 300-W 68, dlib order",
                     "value": f"mean distance of the inner-lip points {list(map(list, INNER_LIP_PAIRS))} (0-based) / "
                              f"distance of the eye centres (means of points {right.start}-{right.stop - 1} and "
                              f"{left.start}-{left.stop - 1})",
                     "no_face": "last face's value; none at all: zeros"}
    attrs = provenance("mouth_open", params_record, weights_info(SHAPE_68), torch.device("cpu"))
    attrs["columns"] = "inner_lip_gap_per_interocular"
    extract_faces_stream(faces_path, out_path, stream="mouth_open", dim=MOUTH_DIM, compute=mouth_open_of,
                         compute_args=(), batch_size=params.batch_size, threads=threads, attrs=attrs)


def extract(job) -> None:
    """The ``mouth_open`` stream's extractor (``vafusion.features.registry``)."""
    extract_mouth_open(job.faces, job.output, MouthParams(**job.settings), threads=job.threads)
