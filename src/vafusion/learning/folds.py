"""Cross-validation folds: Yu et al.'s "six-fold cross-validation on randomly segmented
annotated data", seeded.

Fold 0 is the official split (train / validation). For the others the training trials are
grouped — the ``_left``/``_right`` trials of one video always together, and, with a subject
map, all trials of one subject together (groups are the connected components of "same
video or same subject") — the groups are shuffled with the seed and cut into n_folds - 1
chunks; with the validation partition as one more chunk, each chunk is validated once while
all the others train.

A video or a subject with trials in both partitions is refused (``partition_overlap``):
fold 0 would train and validate on the same person.

Every fold also records its training trials' groups (``train_groups``, grouped the same
way, the validation partition's trials included where they train): the inner selection
split of ``vafusion.learning.train`` draws whole groups from them, so that no video or
subject is on both sides of it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def group_trials(trials: dict[str, str], subjects: dict[str, str] | None = None) -> list[list[str]]:
    """Connected components of "same video or same subject"; ``trials`` maps trial -> video.
    Each group sorted, groups sorted by their first trial (independent of input order)."""
    parent = {t: t for t in trials}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    first_of: dict[tuple[str, str], str] = {}
    for trial in sorted(trials):
        keys = [("video", trials[trial])]
        if subjects and trial in subjects:
            keys.append(("subject", subjects[trial]))
        for key in keys:
            if key in first_of:
                parent[root(trial)] = root(first_of[key])
            else:
                first_of[key] = trial
    groups: dict[str, list[str]] = {}
    for trial in sorted(trials):
        groups.setdefault(root(trial), []).append(trial)
    return sorted(groups.values(), key=lambda g: g[0])


def partition_overlap(train: dict[str, str], validation: dict[str, str],
                      subjects: dict[str, str] | None = None) -> list[str]:
    """One line per group of trials (same video or same subject, ``group_trials``) that has
    trials in both partitions, naming its subjects and the trials on each side: fold 0 (the
    official split) would train and validate on one person, and no fold assignment can undo
    that. Empty when the partitions share no video and no subject."""
    video_of = {**train, **validation}
    problems = []
    for group in group_trials(video_of, subjects):
        in_train, in_val = [t for t in group if t in train], [t for t in group if t in validation]
        if in_train and in_val:
            who = sorted({subjects[t] for t in group if subjects and t in subjects})
            what = (f"subject{'s' if len(who) > 1 else ''} {', '.join(repr(w) for w in who)}" if who else
                    f"video {video_of[group[0]]!r}")
            problems.append(f"{what} has trials in both partitions (train: {', '.join(in_train)}; validation: "
                            f"{', '.join(in_val)})")
    return problems


def resampling_units(videos: dict[str, str], subjects: dict[str, str] | None = None) -> dict[str, str]:
    """trial -> the unit a cluster bootstrap resamples: its video, or with a subject map the
    group of everything that shares a video or a subject with it (``group_trials``), named
    by its videos joined with '+'."""
    units = {}
    for group in group_trials(videos, subjects):
        name = "+".join(sorted({videos[t] for t in group}))
        units.update({t: name for t in group})
    return units


def make_folds(train: dict[str, str], validation: dict[str, str], n_folds: int, seed: int,
               excluded: dict[str, str] | None = None, subjects: dict[str, str] | None = None) -> dict:
    """``train`` and ``validation`` map each trial of the partition to its video; ``excluded``
    trials (with a reason, e.g. no annotated frame) are left out of every fold; ``subjects``
    maps trials to subjects. Each fold's ``train_groups`` are the groups of its training
    trials (``group_trials``), the inner selection split's units."""
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    if not isinstance(validation, dict):
        raise TypeError("make_folds: validation must map each validation trial to its video, like train")
    excluded = dict(excluded or {})
    kept_train = {t: v for t, v in train.items() if t not in excluded}
    if problems := partition_overlap(kept_train, {t: v for t, v in validation.items() if t not in excluded}, subjects):
        raise ValueError("subject-independent folds are impossible: " + "; ".join(problems) + ". Fold 0 is the "
                         "official split and would train and validate on the same person: move these trials into one "
                         "partition, or correct learning.fold_groups")
    groups = group_trials(kept_train, subjects)
    if len(groups) < n_folds - 1:
        raise ValueError(f"{len(groups)} groups of training trials (videos or subjects) cannot make "
                         f"{n_folds - 1} chunks for {n_folds} folds")
    order = np.random.default_rng(seed).permutation(len(groups))
    shuffled = [groups[i] for i in order]
    bounds = np.array_split(np.arange(len(shuffled)), n_folds - 1)  # sizes differ by at most one group
    chunks = [sorted(t for g in idx for t in shuffled[g]) for idx in bounds]
    valid_val = sorted(t for t in validation if t not in excluded)
    video_of = {**train, **validation}

    def fold(number: int, trains: list[str], validates: list[str]) -> dict:
        return {"fold": number, "train": sorted(trains), "validation": validates,
                "train_groups": group_trials({t: video_of[t] for t in trains}, subjects)}

    folds = [fold(0, sum(chunks, []), valid_val)]
    for k, held_out in enumerate(chunks, start=1):
        rest = [t for i, chunk in enumerate(chunks, start=1) if i != k for t in chunk]
        folds.append(fold(k, rest + valid_val, held_out))
    return {"n_folds": n_folds, "seed": seed, "groups": shuffled, "chunks": chunks,
            "official_validation": valid_val, "excluded": excluded, "folds": folds}


def read_subject_map(path: str | Path) -> dict[str, str]:
    """``trial,subject`` CSV (header required) -> {trial: subject}; errors name file and line."""
    subjects: dict[str, str] = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if [h.strip() for h in header or []] != ["trial", "subject"]:
            raise ValueError(f"{path}:1: the header must be 'trial,subject', found {header!r}")
        for row in rows:
            number = rows.line_num  # physical line (a quoted field may span lines)
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{number}: expected 'trial,subject', found {','.join(row)!r}")
            trial, subject = row[0].strip(), row[1].strip()
            if subjects.get(trial, subject) != subject:
                raise ValueError(f"{path}:{number}: trial '{trial}' is given two subjects "
                                 f"('{subjects[trial]}' and '{subject}')")
            subjects[trial] = subject
    return subjects


def excluded_trials(label_files: list[str]) -> dict[str, str]:
    """Annotated trials without a single annotated frame (all -5), with the reason."""
    import h5py

    excluded = {}
    for path in label_files:
        with h5py.File(path) as h5:
            if not (h5["valid_valence"][:].any() or h5["valid_arousal"][:].any()):
                excluded[Path(path).stem] = f"every row of {h5.attrs['annotation']} is -5"
    return excluded
