"""Trial discovery: layout rules and the early, file-naming errors."""

from pathlib import Path

import pytest

from vafusion.dataset import DatasetError, discover, video_for_trial

HEADER = "valence,arousal\n0.1,0.2\n"


def layout(root: Path, videos, train, validation, test=None, cropped=()):
    """Create a data layout under root (discovery never decodes, so videos can be empty files)."""
    for rel in videos:
        (root / "videos" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "videos" / rel).write_bytes(b"")
    for part, names in (("train", train), ("validation", validation)):
        (root / "ann" / part).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "ann" / part / f"{name}.txt").write_text(HEADER)
    for name in cropped:
        (root / "crops" / name).mkdir(parents=True)
    (root / "crops").mkdir(exist_ok=True)
    data = {
        "videos": str(root / "videos"),
        "annotations": {"train": str(root / "ann" / "train"), "validation": str(root / "ann" / "validation")},
        "cropped_aligned": str(root / "crops"),
        "test_trials": None,
    }
    if test is not None:
        (root / "test.txt").write_text("".join(f"{t}\n" for t in test))
        data["test_trials"] = str(root / "test.txt")
    return data


def test_discovers_trials_videos_sides_and_cropped_folders(tmp_path):
    root = tmp_path / "my data"  # paths with spaces work
    data = layout(
        root,
        videos=["a/one.mp4", "b/duo.avi", "two.MKV", "unused.webm", "three.mpg"],
        train=["one", "duo_left", "duo_right"],
        validation=["two"],
        test=["three", "# a comment", ""],
        cropped=["one", "duo_right"],
    )
    ds = discover(data)
    assert list(ds.trials) == ["duo_left", "duo_right", "one", "three", "two"]
    assert ds.trials["duo_left"].video == "duo" and ds.trials["duo_left"].side == "left"
    assert ds.trials["duo_right"].side == "right"
    assert ds.trials["one"].side is None
    assert ds.trials["three"].partition == "test" and ds.trials["three"].annotation is None
    assert ds.trials["two"].partition == "validation"
    assert ds.trials["one"].cropped_aligned == root / "crops" / "one"
    assert ds.trials["duo_left"].cropped_aligned is None
    assert set(ds.used_videos) == {"one", "duo", "two", "three"}  # 'unused' has no trial
    assert ds.used_videos["duo"] == root / "videos" / "b" / "duo.avi"
    assert [t.name for t in ds.partition("train")] == ["duo_left", "duo_right", "one"]


def test_exact_video_name_wins_over_suffix_rule():
    videos = {"x_left": Path("x_left.mp4"), "x": Path("x.mp4")}
    assert video_for_trial("x_left", videos) == ("x_left", None)
    assert video_for_trial("x_right", videos) == ("x", "right")
    assert video_for_trial("y", videos) is None


def problems(data):
    with pytest.raises(DatasetError) as err:
        discover(data)
    return str(err.value)


def test_annotation_without_video_names_the_file(tmp_path):
    data = layout(tmp_path, videos=["one.mp4"], train=["one", "ghost_left"], validation=[])
    msg = problems(data)
    assert str(tmp_path / "ann" / "train" / "ghost_left.txt") in msg
    assert "no video for trial 'ghost_left'" in msg


def test_video_name_found_twice_names_both_files(tmp_path):
    data = layout(tmp_path, videos=["a/one.mp4", "b/one.avi"], train=["one"], validation=[])
    msg = problems(data)
    assert "'one' is found 2 times" in msg
    assert str(tmp_path / "videos" / "a" / "one.mp4") in msg and str(tmp_path / "videos" / "b" / "one.avi") in msg


def test_trial_in_train_and_validation(tmp_path):
    data = layout(tmp_path, videos=["one.mp4"], train=["one"], validation=["one"])
    assert "trial 'one' is annotated twice" in problems(data)


def test_test_trial_without_video_or_also_annotated(tmp_path):
    data = layout(tmp_path, videos=["one.mp4"], train=["one"], validation=[], test=["one", "nope"])
    msg = problems(data)
    assert f"{tmp_path / 'test.txt'}:1: trial 'one' is listed twice" in msg
    assert f"{tmp_path / 'test.txt'}:2: no video for trial 'nope'" in msg


@pytest.mark.parametrize("key", ["videos", "annotations.train", "cropped_aligned", "test_trials"])
def test_missing_paths_are_named(tmp_path, key):
    data = layout(tmp_path, videos=["one.mp4"], train=["one"], validation=[], test=["one"])
    missing = str(tmp_path / "does not exist")
    if key == "annotations.train":
        data["annotations"]["train"] = missing
    else:
        data[key] = missing
    msg = problems(data)
    assert f"data.{key}:" in msg and missing in msg


def test_no_annotations_at_all(tmp_path):
    data = layout(tmp_path, videos=["one.mp4"], train=[], validation=[])
    assert "no annotation files" in problems(data)


def test_prediction_only_layout_makes_every_video_a_test_trial(tmp_path):
    data = layout(tmp_path, videos=["a/one.mp4", "duo.avi"], train=[], validation=[])
    data["annotations"] = None
    ds = discover(data)
    assert {n: (t.partition, t.annotation) for n, t in ds.trials.items()} == {"one": ("test", None),
                                                                              "duo": ("test", None)}
    # a trial list picks the videos (and the side of a two-person one)
    (tmp_path / "pick.txt").write_text("duo_left\n")
    ds = discover({**data, "test_trials": str(tmp_path / "pick.txt")})
    assert list(ds.trials) == ["duo_left"] and ds.trials["duo_left"].side == "left"
    # with annotation folders, none found is still an error
    with pytest.raises(DatasetError, match="no annotation files"):
        discover(layout(tmp_path / "other", videos=["x.mp4"], train=[], validation=[]))
