"""Cross-validation folds: Yu et al.'s random segmentation, seeded, with the trials of one
video (and, optionally, one subject) kept together; each fold's training groups, the inner
selection split's units, grouped the same way."""

from __future__ import annotations

import pytest

from test_learning import write_labels
from vafusion.learning.bootstrap import Bootstrap
from vafusion.learning.folds import (excluded_trials, group_trials, make_folds, partition_overlap, read_subject_map,
                                    resampling_units)

TRAIN = {"a": "a", "b_left": "b", "b_right": "b", "c": "c", "d": "d", "e": "e", "f": "f", "g": "g"}
VALIDATION = {"v1": "v1", "v2": "v2"}  # trial -> video, like TRAIN
MANY = {f"t{i:02d}": f"t{i:02d}" for i in range(20)}  # 20 one-trial videos
# 12 two-person videos (a _left and a _right trial each) and 5 one-person videos
PAIRS = {f"p{i:02d}_{side}": f"p{i:02d}" for i in range(12) for side in ("left", "right")} | {
    f"s{i}": f"s{i}" for i in range(5)}


def chunk_of(folds: dict, trial: str) -> int:
    return next(i for i, chunk in enumerate(folds["chunks"]) if trial in chunk)


def test_every_trial_is_validated_once_and_fold_0_is_the_official_split():
    folds = make_folds(TRAIN, VALIDATION, 6, seed=0)
    assert folds["folds"][0] == {"fold": 0, "train": sorted(TRAIN), "validation": sorted(VALIDATION),
                                 "train_groups": group_trials(TRAIN)}
    assert len(folds["folds"]) == 6 and len(folds["chunks"]) == 5
    held_out = sorted(t for f in folds["folds"] for t in f["validation"])
    assert held_out == sorted(list(TRAIN) + list(VALIDATION))  # each trial validated exactly once
    for fold in folds["folds"]:
        assert not set(fold["train"]) & set(fold["validation"])
        assert sorted(fold["train"] + fold["validation"]) == sorted(list(TRAIN) + list(VALIDATION))
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
    assert make_folds(shuffled, dict(reversed(VALIDATION.items())), 6, seed=0) == folds  # input order is irrelevant
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


def test_every_fold_records_its_training_groups_with_the_validation_partitions_videos():
    """train_groups: the groups of each fold's training trials, those of the validation
    partition included where they train (fold k > 0), by video and subject."""
    validation = {"w_left": "w", "w_right": "w", "x": "x", "y": "y"}
    subjects = {"y": "s9", "x": "s9", "p00_left": "s7", "p01_right": "s7"}
    for seed in range(5):
        folds = make_folds(PAIRS, validation, 4, seed=seed, subjects=subjects)
        for fold in folds["folds"]:
            groups = fold["train_groups"]
            assert sorted(t for g in groups for t in g) == fold["train"]  # a partition of the training trials
            video_of = {**PAIRS, **validation}
            assert groups == group_trials({t: video_of[t] for t in fold["train"]}, subjects)
            def group_of(trial: str) -> list[str]:
                return next(g for g in groups if trial in g)
            for i in range(12):
                if f"p{i:02d}_left" in fold["train"]:
                    assert f"p{i:02d}_right" in group_of(f"p{i:02d}_left")  # the two faces of one video
            if fold["fold"] > 0:  # the validation partition trains here, grouped like the rest
                assert ["w_left", "w_right"] in groups
            if fold["fold"] > 0:
                assert group_of("y") == ["x", "y"]  # one subject in two videos of the validation partition
            if "p00_left" in fold["train"]:
                assert group_of("p00_left") == ["p00_left", "p00_right", "p01_left", "p01_right"]
        assert folds["folds"][0]["train_groups"] == [sorted(g) for g in sorted(folds["groups"], key=lambda g: g[0])]
    with pytest.raises(TypeError, match="validation must map each validation trial to its video"):
        make_folds(PAIRS, ["w_left", "w_right"], 4, seed=0)


def test_a_subject_in_both_partitions_is_refused_naming_it():
    """Fold 0 is the official split: a subject with trials on both sides would be trained and
    validated on; no fold assignment can undo it, so it stops, naming subject and trials."""
    subjects = {"a": "anna", "v1": "anna", "c": "carl"}
    assert partition_overlap(TRAIN, VALIDATION, subjects) == [
        "subject 'anna' has trials in both partitions (train: a; validation: v1)"]
    with pytest.raises(ValueError, match=r"subject-independent folds are impossible: subject 'anna' has trials in "
                                         r"both partitions \(train: a; validation: v1\)"):
        make_folds(TRAIN, VALIDATION, 4, seed=0, subjects=subjects)
    # a two-person video split across the partitions is refused as well (no subject map needed)
    assert partition_overlap(TRAIN, {"b_left": "b"} | VALIDATION) == [
        "video 'b' has trials in both partitions (train: b_left, b_right; validation: b_left)"]
    # an all -5 trial is left out of the folds, and so out of the check
    assert make_folds(TRAIN, VALIDATION, 4, seed=0, subjects=subjects, excluded={"v1": "all -5"})["folds"]
    assert partition_overlap(TRAIN, VALIDATION, {"a": "anna", "c": "anna"}) == []


def test_the_bootstrap_resamples_subjects_when_a_subject_map_is_given():
    """With a subject map the resampling unit is the subject (with its videos): the trials
    of one subject always get the same count; without one, each video is a unit."""
    import numpy as np

    videos = {f"t{i}": f"video{i}" for i in range(8)} | {"duo_left": "duo", "duo_right": "duo"}
    subjects = {"t0": "s1", "t1": "s1", "t2": "s1", "t3": "s2", "duo_left": "s2"}
    units = resampling_units(videos, subjects)
    assert units["t0"] == units["t1"] == units["t2"] == "video0+video1+video2"
    assert units["t3"] == units["duo_left"] == units["duo_right"] == "duo+video3"
    assert len(set(units.values())) == 6 and resampling_units(videos) == {t: v for t, v in videos.items()}
    rng = np.random.default_rng(0)
    run = {(0, t): (rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), np.ones((5, 2), bool)) for t in videos}
    boot = Bootstrap({"a": run}, units, n_resamples=300, seed=0)
    assert boot.n_videos == 6
    column = {name: i for i, name in enumerate(boot.videos)}
    counts = boot.counts
    assert (counts.sum(axis=1) == 6).all()
    assert set(column) == set(units.values())
