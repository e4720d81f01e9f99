"""Face alignment: the similarity fit, the landmark warp on a real face, gap filling."""

import av
import cv2
import h5py
import numpy as np
import pytest

from conftest import GRID, TEST_DATA
from vafusion.faces import (
    ARCFACE_TEMPLATE,
    FACE_SIZE,
    FaceDetector,
    FaceTrackWriter,
    alignment_matrix,
    align_trial_faces,
    pick_face,
    similarity_transform,
    DetectedFace,
)

# Hand-labelled eye centres of tests/data/astronaut.png (image-left, image-right), pixels.
ASTRONAUT_EYES = np.array([[205.0, 102.0], [246.0, 103.0]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def astronaut_rgb():
    return cv2.cvtColor(cv2.imread(str(TEST_DATA / "astronaut.png")), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("angle_deg, scale", [(0.0, 1.0), (12.0, 1.4), (-10.0, 0.8)])
def test_known_face_lands_its_eyes_on_the_template(angle_deg, scale):
    """Detect + landmark + warp a real face (also rotated and rescaled): its hand-labelled
    eye centres must land within 3 px of the ArcFace template's eyes."""
    rgb = astronaut_rgb()
    eyes = ASTRONAUT_EYES
    if angle_deg or scale != 1.0:
        m = cv2.getRotationMatrix2D((256, 256), angle_deg, scale)
        rgb = cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
        eyes = apply(m, eyes)
    chosen = pick_face(FaceDetector(upsample=1).detect(rgb), None, rgb.shape[1])
    assert chosen is not None
    landed = apply(alignment_matrix(chosen.keypoints), eyes)
    error = np.linalg.norm(landed - ARCFACE_TEMPLATE[:2], axis=1)
    assert error.max() < 3.0, f"eyes land {landed.round(2).tolist()}, error {error.round(2).tolist()} px"


def test_detection_on_decoder_buffers_equals_detection_on_copies():
    """PyAV hands out frames as views into its padded planes, and dlib misreads those (a
    SLURM run and a local run once differed by it), so the detector must work on a copy."""
    detector = FaceDetector()
    n = 0
    with av.open(str(GRID / "bbaf2n.mpg")) as container:
        for frame in container.decode(video=0):
            view = frame.to_ndarray(format="rgb24")
            on_view = [(f.box, f.keypoints.tolist()) for f in detector.detect(view)]
            assert on_view == [(f.box, f.keypoints.tolist()) for f in detector.detect(view.copy())], frame.index
            n += not view.flags["C_CONTIGUOUS"]
    assert n, "the clip's frames should come with padded rows"


def face(x0, width=50):
    return DetectedFace((x0, 10, x0 + width, 10 + width), np.zeros((3, 2)))


def test_pick_face_by_side_and_size():
    small_left, big_right, biggest_mid = face(10, 40), face(300, 60), face(150, 80)
    assert pick_face([], None, 400) is None
    assert pick_face([small_left, big_right], None, 400) is big_right
    assert pick_face([big_right, small_left], "left", 400) is small_left
    assert pick_face([big_right, small_left], "right", 400) is big_right
    # two largest faces decide: the tiny one at the far left is ignored
    assert pick_face([face(0, 10), biggest_mid, big_right], "left", 400) is biggest_mid
    # a lone face belongs to the side of the frame it is on
    assert pick_face([small_left], "left", 400) is small_left
    assert pick_face([small_left], "right", 400) is None


def run_writer(tmp_path, pattern, chunk_safe_len=None):
    """Feed faces (value k for a frame with face k, None for none); return faces, mask."""
    with h5py.File(tmp_path / "w.h5", "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, k in enumerate(pattern):
            img = None if k is None else np.full((FACE_SIZE, FACE_SIZE, 3), k, np.uint8)
            writer.add(i / 25, img)
        writer.flush()
        return h5["faces"][:, 0, 0, 0], h5["face_found"][:], h5["timestamps"][:]


@pytest.mark.parametrize("lead", [2, 40])  # a leading gap inside and beyond the first chunk
def test_gaps_take_last_face_and_leading_gap_takes_next(tmp_path, lead):
    pattern = [None] * lead + [7, None, None, 9] + [None] * 35 + [11]
    values, found, times = run_writer(tmp_path, pattern)
    expected = [7] * lead + [7, 7, 7, 9] + [9] * 35 + [11]
    assert values.tolist() == expected
    assert found.tolist() == [k is not None for k in pattern]
    np.testing.assert_allclose(times, np.arange(len(pattern)) / 25)


def test_no_face_at_all_gives_zeros_and_false_mask(tmp_path):
    values, found, _ = run_writer(tmp_path, [None] * 40)
    assert not values.any() and not found.any()


def test_detected_faces_on_a_grid_clip(tmp_path):
    out = tmp_path / "faces.h5"
    stats = align_trial_faces(GRID / "bbaf2n.mpg", out, trial="bbaf2n")
    with h5py.File(out) as h5:
        assert h5["faces"].shape == (75, 112, 112, 3) and h5["faces"].dtype == np.uint8
        assert h5.attrs["source"] == "detected"
        found = h5["face_found"][:]
        assert found.mean() >= 0.95
        assert stats["n_faces_found"] == found.sum()
        np.testing.assert_allclose(np.diff(h5["timestamps"][:]), 0.04, atol=1e-6)
        # a real face, not a blank: centre of the crop is skin-toned and textured
        assert h5["faces"][10].std() > 20
