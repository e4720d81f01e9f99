"""Which trials pick a training's epoch: the fold's validation trials (the papers'
practice) or an inner split of its training groups (so the fold that the report scores
chose nothing), the targets they can be scored on, and the oracle-epoch gap."""

from __future__ import annotations

import logging
import math

import numpy as np

from vafusion.annotations import TARGETS
from vafusion.learning.data import StoredTrial
from vafusion.learning.settings import TrainConfig

log = logging.getLogger(__name__)


def selection_targets(model_name: str, fold: dict, trials: list[StoredTrial], role: str = "validation",
                      selects: bool = True) -> tuple[str, ...]:
    """The targets with valid frames in ``trials`` (the fold's ``role`` trials): both, or the
    one annotated there (said loudly, and recorded in the metrics). When ``selects``, their
    mean CCC picks the epoch. Trials with no frame of either target can neither select nor
    be scored: that stops the job, since an untrained model must never reach a report."""
    scorable = tuple(t for j, t in enumerate(TARGETS) if any(v.valid[:, j].any() for v in trials))
    where = f"{model_name} fold {fold['fold']}"
    names = ", ".join(t.name for t in trials) or "none"
    if not scorable:
        remedy = ("fix the annotations or the folds (learning.n_folds, learning.fold_groups)" if role == "validation"
                  else "another seed (learning.seeds) or a larger learning.train.inner_share draws other groups, "
                       "or set learning.train.selection: validation")
        raise ValueError(f"{where} cannot be scored: its {role} trials ({names}) have no annotated frame for "
                         f"valence nor arousal (all -5 or empty), so no epoch can be selected or scored; {remedy}")
    for target in TARGETS:
        if target not in scorable:
            effects = ([f"epochs are selected on {scorable[0]} alone"] if selects else []) + (
                [f"this fold has no {target} CCC"] if role == "validation" else [])
            log.warning("!!! %s: its %s trials (%s) have no annotated %s frame: %s (recorded in metrics.json and "
                        "the report) !!!", where, role, names, target, " and ".join(effects))
    return scorable


def inner_split(fold: dict, cfg: TrainConfig) -> list[str]:
    """The fold's inner selection trials: ``max(1, round(inner_share * n_groups))`` whole
    groups of its training trials (folds.json's ``train_groups``: a video's trials, a
    subject's, stay on one side), drawn from (seed, fold) alone, so a rerun or a resumed run
    draws the same, another seed draws others, and the training's random stream is untouched."""
    where = f"fold {fold['fold']}"
    if "train_groups" not in fold:
        raise ValueError(f"{where} has no train_groups: folds.json predates inner selection: rerun make_folds "
                         "(or set learning.train.selection: validation)")
    groups = sorted((sorted(g) for g in fold["train_groups"] if g), key=lambda g: g[0])
    if sorted(t for g in groups for t in g) != sorted(fold["train"]):
        raise ValueError(f"{where}: its train_groups are not a partition of its training trials: folds.json is "
                         "inconsistent, rerun make_folds")
    n_inner = max(1, round(cfg.inner_share * len(groups)))
    if n_inner >= len(groups):
        raise ValueError(f"learning.train.inner_share {cfg.inner_share:g} holds out {n_inner} of the {len(groups)} "
                         f"training group(s) of {where} for selection, which leaves none to train on: lower it, "
                         "use more folds' worth of training videos, or set learning.train.selection: validation")
    chosen = np.random.default_rng([cfg.seed, fold["fold"]]).choice(len(groups), size=n_inner, replace=False)
    return sorted(t for i in chosen for t in groups[i])


def oracle_epoch_gap(history: list[dict], selected_epoch: int, targets: tuple[str, ...]) -> dict:
    """The oracle-epoch gap: the validation CCCs at the epoch the scored fold's own mean CCC
    (over ``targets``) picks among every epoch trained (by validation mode's rule: first
    maximum, NaN never picked), minus those at ``selected_epoch`` (the inner split's pick).
    It is what peeking at the answers could add to this training's score: an upper bound on
    the optimism of selecting on the scored fold, not an estimate of it (the honest pick
    also pays for the inner split's own noise). NaN when no epoch has a finite validation
    score."""
    keys = ("ccc_valence", "ccc_arousal", "ccc_mean")
    peeked, best = None, -math.inf
    for row in history:
        score = float(np.mean([row[f"val_ccc_{t}"] for t in targets]))
        if not math.isnan(score) and score > best:
            peeked, best = row["epoch"], score
    if peeked is None:
        return {"peeked_epoch": None, **{k: math.nan for k in keys}}
    at = {row["epoch"]: row for row in history}
    return {"peeked_epoch": peeked, **{k: at[peeked][f"val_{k}"] - at[selected_epoch][f"val_{k}"] for k in keys}}
