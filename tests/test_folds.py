"""Cross-validation folds: Yu et al.'s random segmentation, seeded, with the trials of one
video (and, optionally, one subject) kept together."""

from __future__ import annotations

import pytest

from test_learning import write_labels
from vafusion.learning.folds import excluded_trials, make_folds, read_subject_map

TRAIN = {"a": "a", "b_left": "b", "b_right": "b", "c": "c", "d": "d", "e": "e", "f": "f", "g": "g"}
VALIDATION = ["v1", "v2"]
MANY = {f"t{i:02d}": f"t{i:02d}" for i in range(20)}  # 20 one-trial videos
# 12 two-person videos (a _left and a _right trial each) and 5 one-person videos
PAIRS = {f"p{i:02d}_{side}": f"p{i:02d}" for i in range(12) for side in ("left", "right")} | {
    f"s{i}": f"s{i}" for i in range(5)}


def chunk_of(folds: dict, trial: str) -> int:
    return next(i for i, chunk in enumerate(folds["chunks"]) if trial in chunk)


def test_every_trial_is_validated_once_and_fold_0_is_the_official_split():
    folds = make_folds(TRAIN, VALIDATION, 6, seed=0)
    assert folds["folds"][0] == {"fold": 0, "train": sorted(TRAIN), "validation": VALIDATION}
    assert len(folds["folds"]) == 6 and len(folds["chunks"]) == 5
    held_out = sorted(t for f in folds["folds"] for t in f["validation"])
    assert held_out == sorted(list(TRAIN) + VALIDATION)  # each trial validated exactly once
    for fold in folds["folds"]:
        assert not set(fold["train"]) & set(fold["validation"])
        assert sorted(fold["train"] + fold["validation"]) == sorted(list(TRAIN) + VALIDATION)
    assert chunk_of(folds, "b_left") == chunk_of(folds, "b_right")  # the two faces of one video


def test_two_person_trials_stay_together_and_chunks_are_balanced_in_groups():
    for seed in range(10):
        folds = make_folds(PAIRS, VALIDATION, 6, seed=seed)
        assert len(folds["groups"]) == 17  # one group per video
        for i in range(12):
            assert chunk_of(folds, f"p{i:02d}_left") == chunk_of(folds, f"p{i:02d}_right")
        groups_per_chunk = [sum(1 for g in folds["groups"] if g[0] in chunk) for chunk in folds["chunks"]]
        assert sorted(groups_per_chunk) == [3, 3, 3, 4, 4]  # 17 groups in 5 chunks


def test_chunks_are_a_seeded_random_balanced_segmentation():
    folds = make_folds(MANY, VALIDATION, 6, seed=0)
    sizes = sorted(len(c) for c in folds["chunks"])
    assert sizes == [4, 4, 4, 4, 4]  # 20 videos in 5 chunks
    assert sum(folds["chunks"], []) != sorted(MANY)  # not contiguous pieces of the sorted list
    shuffled = dict(reversed(list(MANY.items())))
    assert make_folds(shuffled, list(reversed(VALIDATION)), 6, seed=0) == folds  # input order is irrelevant
    other = make_folds(MANY, VALIDATION, 6, seed=1)
    assert other["chunks"] != folds["chunks"] and other["seed"] == 1
    uneven = make_folds(MANY, VALIDATION, 4, seed=0)  # 20 videos in 3 chunks: 7, 7, 6
    assert sorted(len(c) for c in uneven["chunks"]) == [6, 7, 7]
    with pytest.raises(ValueError, match="cannot make 11 chunks"):
        make_folds(TRAIN, VALIDATION, 12, seed=0)


def test_subject_map_keeps_a_subjects_videos_together():
    subjects = {"t00": "s1", "t07": "s1", "t13": "s1", "t02": "s2", "t19": "s2"}
    for seed in range(5):
        folds = make_folds(MANY, VALIDATION, 6, seed=seed, subjects=subjects)
        assert len({chunk_of(folds, t) for t in ("t00", "t07", "t13")}) == 1
        assert chunk_of(folds, "t02") == chunk_of(folds, "t19")
        assert sorted(map(sorted, folds["groups"]))[:1] == [["t00", "t07", "t13"]]
    # a subject that links two two-person videos joins all four trials
    four = ["b_left", "b_right", "h_left", "h_right"]
    for seed in range(5):
        linked = make_folds(TRAIN | {"h_left": "h", "h_right": "h"}, VALIDATION, 3, seed=seed,
                            subjects={"b_left": "x", "h_right": "x"})
        assert four in linked["groups"] and len(linked["groups"]) == 7
        assert len({chunk_of(linked, t) for t in four}) == 1


def test_read_subject_map_names_file_and_line(tmp_path):
    good = tmp_path / "subjects.csv"
    good.write_text("trial,subject\nt00,s1\n\nt07,s1\n")
    assert read_subject_map(good) == {"t00": "s1", "t07": "s1"}
    for text, where in (("name,who\nt00,s1\n", ":1:"), ("", ":1:"), ("trial,subject\nt00,s1\nt07\n", ":3:"),
                        ("trial,subject\nt00,s1\n\nt07,\n", ":4:"), ("trial,subject\nt00,s1,x\n", ":2:"),
                        ("trial,subject\nt00,s1\n\n\nt00,s2\n", ":5:")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"bad.csv{where}"):
            read_subject_map(bad)


def test_all_unannotated_trial_is_excluded(tmp_path):
    write_labels(tmp_path / "c.h5", [-5, -5], [-5, -5])
    write_labels(tmp_path / "a.h5", [-5, 0.1], [-5, -5])
    excluded = excluded_trials([str(tmp_path / "c.h5"), str(tmp_path / "a.h5")])
    assert list(excluded) == ["c"]
    folds = make_folds(TRAIN, VALIDATION, 6, seed=0, excluded=excluded | {"v2": "no frames"})
    for gone in ("c", "v2"):
        assert all(gone not in f["train"] + f["validation"] for f in folds["folds"])
        assert all(gone not in chunk for chunk in folds["chunks"] + [folds["official_validation"]])
    assert sorted(t for f in folds["folds"] for t in f["validation"]) == sorted(set(TRAIN) - {"c"} | {"v1"})
