"""The dlib face streams (vafusion.features.dlib_face) on real GRID faces: landmarks and
descriptors equal dlib called here on the same faces (normalised by a formula of this
test's own), the no-face policy, worker processes, and that the streams carry what they
are for: the landmarks follow the mouth of a speaker, the descriptor is the face's identity
as dlib's own whole-frame pipeline gives it."""

import functools
import hashlib
import logging

import cv2
import dlib
import h5py
import numpy as np
import pytest

from conftest import GRID, write_faces
from vafusion.faces import (
    FaceDetector, FaceJpegs, FaceTrackWriter, align_trial_faces, dlib_model_path, encode_face, pick_face, warp_face)
from vafusion.features.dlib_face import TEMPLATE_BOX, extract
from vafusion.features.registry import ExtractJob
from vafusion.video import iter_frames

CLIP = GRID / "lbax4n.mpg"  # a speaker saying "lay blue at x four now": the mouth opens and shuts
BOX = dlib.rectangle(16, 26, 102, 112)  # left, top, right, bottom (inclusive) on the 112x112 face


@pytest.fixture(scope="module")
def faces_file(tmp_path_factory):
    """The clip's aligned faces (HOG): a face on each of its 75 frames."""
    path = tmp_path_factory.mktemp("dlib") / "lbax4n.h5"
    align_trial_faces(CLIP, path, trial="lbax4n")
    with h5py.File(path) as h5:
        assert h5["face_found"][:].all()
    return path


@pytest.fixture(scope="module")
def gappy_faces_file(faces_file, tmp_path_factory):
    """Ten frames: two without a face, faces 0-2, two without, face 3, one without, face 4
    (the clip's faces 0, 10, 20, 30 and 40, so that each differs)."""
    pattern = [None, None, 0, 10, 20, None, None, 30, None, 40]
    with h5py.File(faces_file) as h5:
        jpegs = FaceJpegs(h5)[:]
    path = write_faces(tmp_path_factory.mktemp("dlib") / "gappy.h5", [None if k is None else jpegs[k] for k in pattern])
    return path, pattern


def run(stream, faces, out, threads=1, **settings):
    extract(ExtractJob(stream=stream, output=str(out), settings=settings, faces=str(faces), threads=threads))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["face_found"][:], dict(h5.attrs)


def rgb_faces(faces):
    """The faces file's JPEGs decoded here with OpenCV (BGR) and turned to RGB."""
    with h5py.File(faces) as h5:
        return [cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for data in FaceJpegs(h5)[:]]


@functools.cache
def dlib_model(file_name):
    path = str(dlib_model_path(file_name))
    return dlib.face_recognition_model_v1(path) if "recognition" in file_name else dlib.shape_predictor(path)


def points(shape):
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], float)


def dlib_landmarks(rgb):
    return points(dlib_model("shape_predictor_68_face_landmarks.dat")(rgb, BOX))


def face_normalised(p):
    """(68, 2) pixels -> (68, 2): as complex numbers, (p - eye midpoint) / (left eye - right
    eye), the eyes being the means of points 42-47 and 36-41: the eye line becomes the real
    axis, the inter-ocular distance 1."""
    z = p[:, 0] + 1j * p[:, 1]
    right, left = z[36:42].mean(), z[42:48].mean()
    w = (z - (right + left) / 2) / (left - right)
    return np.stack([w.real, w.imag], axis=1)


def test_template_box_is_where_hog_finds_the_aligned_faces(faces_file):
    hog = dlib.get_frontal_face_detector()
    for rgb in rgb_faces(faces_file)[::15]:
        (found,) = hog(rgb, 0)
        assert (found.left(), found.top(), found.right(), found.bottom()) == TEMPLATE_BOX == (16, 26, 102, 112)


def test_landmarks_are_dlibs_68_points_normalised_to_the_eyes(faces_file, tmp_path):
    features, found, attrs = run("landmarks", faces_file, tmp_path / "lm.h5")
    assert features.shape == (75, 136) and found.all()
    faces = rgb_faces(faces_file)
    for i in (0, 20, 37, 74):
        expected = face_normalised(dlib_landmarks(faces[i]))
        np.testing.assert_allclose(features[i].reshape(68, 2), expected, atol=1e-5)  # x, y interleaved
    model = dlib_model_path("shape_predictor_68_face_landmarks.dat")
    assert attrs["weights_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "shape_predictor_68_face_landmarks.dat" in attrs["weights"] and attrs["weights_seed"] == -1
    assert attrs["extractor"] == "landmarks" and attrs["faces_source"] == "detected"


def test_landmarks_follow_the_mouth_not_the_head(faces_file, tmp_path):
    """While the speaker talks, the inner lips (62 upper, 66 lower) part and close: their
    distance varies far more than that of the outer eye corners (36, 45), which the
    alignment and the normalisation hold still."""
    p = run("landmarks", faces_file, tmp_path / "lm.h5")[0].reshape(-1, 68, 2)
    mouth = np.linalg.norm(p[:, 62] - p[:, 66], axis=1)
    eyes = np.linalg.norm(p[:, 36] - p[:, 45], axis=1)
    assert mouth.min() < 0.02 and mouth.max() > 0.15, (mouth.min(), mouth.max())  # shut, and open
    assert mouth.std() > 3 * eyes.std(), (mouth.std(), eyes.std())
    # the face's layout in its own frame: eyes on the x axis at -0.5 and +0.5, mouth below
    np.testing.assert_allclose(p[:, 36:42].mean(axis=1).mean(axis=0), [-0.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(p[:, 42:48].mean(axis=1).mean(axis=0), [0.5, 0.0], atol=1e-5)
    assert (p[:, 48:68, 1] > 0.7).all() and (p[:, 48:68, 1] < 1.6).all()


def test_frames_without_a_face_repeat_the_last_face(gappy_faces_file, tmp_path, caplog):
    path, pattern = gappy_faces_file
    own = {}  # each found face's row, computed alone
    with caplog.at_level(logging.INFO, logger="vafusion.features.dlib_face"):
        features, found, _ = run("landmarks", path, tmp_path / "lm.h5", batch_size=3)
    assert found.tolist() == [k is not None for k in pattern]
    assert "10 frames, 5 faces computed, 5 frames without a face" in caplog.text
    for i, rgb in enumerate(rgb_faces(path)):
        own[i] = face_normalised(dlib_landmarks(rgb)).ravel()
    source = [2, 2, 2, 3, 4, 4, 4, 7, 7, 9]  # leading gap: the first face; then the last one
    for i, j in enumerate(source):
        np.testing.assert_allclose(features[i], own[j], atol=1e-5, err_msg=f"frame {i}")
    assert len({features[j].tobytes() for j in (2, 3, 4, 7, 9)}) == 5


def test_a_trial_without_any_face_gives_zero_rows(tmp_path, caplog):
    path = write_faces(tmp_path / "none.h5", [None] * 6)
    with caplog.at_level(logging.WARNING):
        for stream, dim in (("landmarks", 136), ("face_descriptor", 128)):
            features, found, _ = run(stream, path, tmp_path / f"{stream}.h5")
            assert features.shape == (6, dim) and not features.any() and not found.any()
    assert "no face in any of its 6 frames" in caplog.text


def test_worker_processes_give_the_same_rows(gappy_faces_file, tmp_path):
    path, _ = gappy_faces_file
    one = run("landmarks", path, tmp_path / "one.h5", batch_size=2)[0]
    two = run("landmarks", path, tmp_path / "two.h5", threads=2, batch_size=2)[0]
    assert np.array_equal(one, two)


def dlib_descriptor_of_aligned(rgb):
    """dlib's descriptor of a 112x112 aligned face as this test computes it: the crop's
    border replicated by 32 px, the 5-point model on the template box, dlib's 150x150 chip."""
    sp5 = dlib_model("shape_predictor_5_face_landmarks.dat")
    rec = dlib_model("dlib_face_recognition_resnet_model_v1.dat")
    padded = cv2.copyMakeBorder(rgb, 32, 32, 32, 32, cv2.BORDER_REPLICATE)
    box = dlib.rectangle(BOX.left() + 32, BOX.top() + 32, BOX.right() + 32, BOX.bottom() + 32)
    return np.array(rec.compute_face_descriptor(dlib.get_face_chip(padded, sp5(padded, box), 150, 0.25)))


def test_descriptors_are_dlibs_on_its_own_face_chip(gappy_faces_file, tmp_path):
    path, pattern = gappy_faces_file
    features, found, attrs = run("face_descriptor", path, tmp_path / "d.h5", batch_size=4)
    assert features.shape == (10, 128)
    faces = rgb_faces(path)
    for i in (2, 3, 4, 7, 9):
        np.testing.assert_allclose(features[i], dlib_descriptor_of_aligned(faces[i]), atol=1e-5, err_msg=f"frame {i}")
    np.testing.assert_array_equal(features[:2], features[[2, 2]])  # no face: the first face's row
    model = dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
    assert attrs["weights_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "shape_predictor_5_face_landmarks.dat" in attrs["shape_predictor"]


def test_descriptor_of_the_aligned_face_is_dlibs_descriptor_of_the_frame(tmp_path):
    """dlib's own pipeline on the whole frame (HOG box, 5 points, chip from the frame) and
    the stream on our aligned face agree well within dlib's same-person distance, 0.6
    (measured 0.14-0.17); the aligned crop merely resized to 150x150, not cut the way dlib
    cuts its chips, lands near that distance (0.57-0.59)."""
    sp5 = dlib_model("shape_predictor_5_face_landmarks.dat")
    rec = dlib_model("dlib_face_recognition_resnet_model_v1.dat")
    hog, detector = dlib.get_frontal_face_detector(), FaceDetector()
    frames = [f.rgb for f in iter_frames(CLIP) if f.index in (5, 40)]
    path = tmp_path / "faces.h5"
    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, rgb in enumerate(frames):
            chosen = pick_face(detector.detect(rgb), None, rgb.shape[1])
            writer.add(i / 25, encode_face(warp_face(rgb, chosen.keypoints)))
        writer.flush()
    features = run("face_descriptor", path, tmp_path / "d.h5")[0]
    for rgb, ours, face in zip(frames, features, rgb_faces(path)):
        rgb = np.ascontiguousarray(rgb)
        whole_frame = np.array(rec.compute_face_descriptor(rgb, sp5(rgb, hog(rgb, 0)[0])))
        assert np.linalg.norm(ours - whole_frame) < 0.25
        resized = np.array(rec.compute_face_descriptor(cv2.resize(face, (150, 150))))
        assert np.linalg.norm(resized - whole_frame) > 0.4


def test_unknown_stream_is_refused(faces_file, tmp_path):
    with pytest.raises(ValueError, match="landmarks and face_descriptor"):
        extract(ExtractJob(stream="iresnet50", output=str(tmp_path / "x.h5"), settings={}, faces=str(faces_file)))
