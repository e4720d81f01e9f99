"""Zero-training baselines: a face model that predicts valence and arousal itself (HSEmotion's
``enet_b0_8_va_mtl``: 8 expression logits, then valence and arousal) scored as it is, beside
the fusion models ("just give me VA on my own video").

The stream's columns named by ``features.face_models.<stream>.valence_arousal`` are the
prediction, frame by frame, unsmoothed and untouched. Each fold's validation trials are
scored like a trained run's (val_predictions.h5, metrics.json), so the report ranks the
baseline with the same pooled CCC and bootstrap intervals; every seed gets the same
numbers (nothing is drawn). Its metrics say ``baseline``: the report marks it as untrained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vafusion.annotations import TARGETS
from vafusion.io import atomic_output
from vafusion.learning.data import load_trial
from vafusion.learning.predict import fold_ccc
from vafusion.learning.results import write_trial_predictions

log = logging.getLogger(__name__)
def stream_predictions(path: str | Path, stream: str, columns: list[int]):
    """(the aligned trial, its (T, 2) valence/arousal columns of ``stream``)."""
    trial = load_trial(path, [stream])
    x = trial.streams[stream]
    if max(columns) >= x.shape[1]:
        raise ValueError(f"{path}: '{stream}' has {x.shape[1]} columns, valence_arousal names {columns}")
    return trial, np.ascontiguousarray(x[:, columns], np.float32)


def score_baseline(name: str, stream: str, columns: list[int], fold: dict, aligned: dict[str, Path], seed: int,
                   out_dir: str | Path) -> dict:
    """Write ``out_dir``/val_predictions.h5 and metrics.json of the baseline ``name`` on
    ``fold``'s validation trials, laid out like a trained run's."""
    trials, predictions = [], {}
    for trial_name in fold["validation"]:
        trial, predictions[trial_name] = stream_predictions(aligned[trial_name], stream, columns)
        trials.append(trial)
    scores = fold_ccc(predictions, trials)
    n_valid = {t: int(sum(tr.valid[:, j].sum() for tr in trials)) for j, t in enumerate(TARGETS)}
    metrics = {"model": name, "fold": fold["fold"], "seed": seed, **scores,
               "baseline": {"stream": stream, "columns": columns,
                            "what": f"{stream}'s own valence and arousal outputs (columns {columns}), no training"},
               "selection": None, "n_valid_frames": n_valid, "n_validation_trials": len(trials),
               "unscored_targets": [t for t in TARGETS if n_valid[t] == 0],
               "streams": {"audio": [], "visual": [stream]}}
    out_dir = Path(out_dir)
    with atomic_output(out_dir / "val_predictions.h5") as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            for trial in trials:
                write_trial_predictions(h5, trial.name, predictions[trial.name], trial.labels, trial.valid)
    with atomic_output(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    log.info("%s seed %d fold %d: CCC valence %.3f, arousal %.3f over %d trials (no training)", name, seed,
             fold["fold"], scores["ccc_valence"], scores["ccc_arousal"], len(trials))
    return metrics


def predict_baseline(stream: str, columns: list[int], aligned: dict[str, Path], out_dir: str | Path) -> None:
    """One ``<trial>.txt`` per test trial (header ``valence,arousal``): the stream's columns."""
    for name, path in sorted(aligned.items()):
        _, va = stream_predictions(path, stream, columns)
        with atomic_output(Path(out_dir) / f"{name}.txt") as tmp:
            tmp.write_text("\n".join(["valence,arousal"] + [f"{v:.6f},{a:.6f}" for v, a in va]) + "\n")
        log.info("%s: %d frames, %s's own valence and arousal", name, len(va), stream)
