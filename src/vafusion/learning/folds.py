"""Deterministic cross-validation folds.

Fold 0 is the official split (train / validation). For the others the training partition,
as a sorted list of trials, is cut into n_folds - 1 contiguous chunks; with the validation
partition as one more chunk, each chunk serves once as the validation set while all the
others train. The ``_left``/``_right`` trials of one video always share a chunk.
"""

from __future__ import annotations

import numpy as np


def make_folds(train: dict[str, str], validation: list[str], n_folds: int,
               excluded: dict[str, str] | None = None) -> dict:
    """``train`` maps each training trial to its video; ``excluded`` trials (with a reason,
    e.g. no annotated frame) are left out of every fold."""
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    excluded = dict(excluded or {})
    groups: dict[str, list[str]] = {}
    for trial in sorted(train):
        if trial not in excluded:
            groups.setdefault(train[trial], []).append(trial)
    ordered = sorted(groups.values(), key=lambda trials: trials[0])  # sorted by first trial name
    if len(ordered) < n_folds - 1:
        raise ValueError(f"{len(ordered)} training videos cannot make {n_folds - 1} chunks")
    bounds = np.array_split(np.arange(len(ordered)), n_folds - 1)  # sizes differ by at most 1
    chunks = [[t for g in idx for t in ordered[g]] for idx in bounds]
    valid_val = sorted(t for t in validation if t not in excluded)
    folds = [{"fold": 0, "train": sorted(sum(chunks, [])), "validation": valid_val}]
    for k, held_out in enumerate(chunks, start=1):
        rest = [t for i, chunk in enumerate(chunks, start=1) if i != k for t in chunk]
        folds.append({"fold": k, "train": sorted(rest + valid_val), "validation": sorted(held_out)})
    return {"n_folds": n_folds, "chunks": chunks, "official_validation": valid_val,
            "excluded": excluded, "folds": folds}


def excluded_trials(label_files: list[str]) -> dict[str, str]:
    """Annotated trials without a single annotated frame (all -5), with the reason."""
    from pathlib import Path

    import h5py

    excluded = {}
    for path in label_files:
        with h5py.File(path) as h5:
            if not (h5["valid_valence"][:].any() or h5["valid_arousal"][:].any()):
                excluded[Path(path).stem] = f"every row of {h5.attrs['annotation']} is -5"
    return excluded
