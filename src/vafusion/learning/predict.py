"""Predicting with a trained fusion model: a trial's per-frame predictions (overlapping
windows averaged per frame, then the model's smoothing), its IACA gate weights, a fold's
CCC, and test predictions from saved models (loaded without running any code)."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import h5py
import numpy as np
import torch

from vafusion.annotations import TARGETS
from vafusion.devices import resolve_device
from vafusion.io import atomic_output
from vafusion.learning.ccc import ccc
from vafusion.learning.data import (Normalizer, StoredTrial, TrialData, load_trial, make_batch, window_starts,
                                    with_unvoiced_filled)
from vafusion.learning.settings import TrainConfig
from vafusion.learning.streams import split_run
from vafusion.models import build_fusion_model
from vafusion.weights import refused_as_unsafe, safe_load, unsafe_global

log = logging.getLogger(__name__)
# the streams of a model.pt saved before stream sets (it records none): Yu et al.'s set
STREAMS_OF_OLDER_MODELS = {"audio": ["vggish", "mfcc"], "visual": ["iresnet50"]}


def smooth(prediction: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average: frame t averages frames t - window//2 .. t + (window-1)//2
    that exist (fewer at the edges; a window longer than the trial averages all of it)."""
    if window <= 1:
        return prediction
    n = len(prediction)
    csum = np.concatenate([np.zeros((1, prediction.shape[1])), np.cumsum(prediction, axis=0, dtype=np.float64)])
    t = np.arange(n)
    lo = np.clip(t - window // 2, 0, n)
    hi = np.clip(t + (window - 1) // 2 + 1, 0, n)
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(prediction.dtype)


# IACA's gate weights per frame, in the paper's symbols: stage 1 G_a, G_v (0: the modality's
# own features, 1: its cross-attended ones), stage 2 G_av (audio, visual, joint).
GATE_COLUMNS = ("G_a0", "G_a1", "G_v0", "G_v1", "G_av0", "G_av1", "G_av2")


def has_gate(model: torch.nn.Module) -> bool:
    return getattr(model, "gate", None) is not None


def predict_trial(model: torch.nn.Module, trial: TrialData, cfg: TrainConfig, device: torch.device,
                  smoothing: int = 0) -> np.ndarray:
    """(T, 2) predictions: every overlapping window's output averaged per frame, then
    smoothed over ``smoothing`` frames (0: not)."""
    return predict_trial_and_gates(model, trial, cfg, device, smoothing)[0]


@torch.inference_mode()
def predict_trial_and_gates(model: torch.nn.Module, trial: TrialData, cfg: TrainConfig, device: torch.device,
                            smoothing: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """``predict_trial``'s predictions and, for a model with an IACA gate, its (T, 7) gate
    weights (``GATE_COLUMNS``) averaged per frame over the windows like the predictions,
    not smoothed; None for a model without gate.

    Always float32, whatever the training precision: a bfloat16 output would round every
    prediction to steps of ~0.004 near +-1 before it is scored and written."""
    model.eval()
    gated = has_gate(model)
    width = 2 + (len(GATE_COLUMNS) if gated else 0)
    total = np.zeros((trial.length, width), np.float64)
    count = np.zeros((trial.length, 1), np.float64)
    starts = window_starts(trial.length, cfg.window, cfg.hop)
    for i in range(0, len(starts), cfg.batch_size):
        chunk = starts[i:i + cfg.batch_size]
        batch = make_batch([(trial, s) for s in chunk], cfg.window).to(device)
        with torch.autocast(device.type, enabled=False):  # float32 even inside a caller's autocast
            if gated:
                out, gates = model(batch.streams, batch.padding, return_gates=True)
                out = torch.cat([out, gates["audio"], gates["visual"], gates["fusion"]], dim=-1)  # (B, L, 9)
            else:
                out = model(batch.streams, batch.padding)  # (B, L, 2)
        out = out.cpu().numpy()
        for j, start in enumerate(chunk):
            n = min(cfg.window, trial.length - start)
            total[start:start + n] += out[j, :n]
            count[start:start + n] += 1
    mean = total / count
    prediction = smooth(mean[:, :2], smoothing).astype(np.float32)
    return prediction, (mean[:, 2:].astype(np.float32) if gated else None)


def fold_ccc(predictions: dict[str, np.ndarray], trials: list[TrialData | StoredTrial]) -> dict[str, float]:
    """CCC per target over all valid frames of ``trials`` concatenated."""
    scores = {}
    for j, target in enumerate(TARGETS):
        pred = np.concatenate([predictions[t.name][t.valid[:, j], j] for t in trials]) if trials else np.array([])
        true = np.concatenate([t.labels[t.valid[:, j], j] for t in trials]) if trials else np.array([])
        # no valid frame: NaN (train_fold has said so once, in selection_targets)
        scores[f"ccc_{target}"] = ccc(pred, true) if pred.size else math.nan
    scores["ccc_mean"] = (scores["ccc_valence"] + scores["ccc_arousal"]) / 2
    return scores


def evaluate(model, trials: list[StoredTrial], cfg: TrainConfig, device, smoothing: int,
             prepare) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predict each trial and score the fold: (scores, predictions, IACA gate weights; {}
    without gate). ``prepare`` loads a trial as the model's (normalised) input, one trial at
    a time, so only one is ever in memory."""
    predictions, gates = {}, {}
    for t in trials:
        predictions[t.name], trial_gates = predict_trial_and_gates(model, prepare(t), cfg, device, smoothing)
        if trial_gates is not None:
            gates[t.name] = trial_gates
    return fold_ccc(predictions, trials), predictions, gates


def load_checkpoint(path: str | Path, device: torch.device) -> dict:
    """A checkpoint written by ``train_fold``, loaded without running code: only tensors,
    plain Python values and numpy arrays are rebuilt (``vafusion.weights.safe_load``)."""
    try:
        return safe_load(path, map_location=device)
    except pickle.UnpicklingError as err:
        if not refused_as_unsafe(err):
            raise ValueError(f"{path}: cannot be read (corrupt or not a checkpoint): {err}") from None
        raise ValueError(f"{path}: refused, it holds Python objects other than tensors and plain values, and "
                         f"unpickling them could run code ({unsafe_global(err)}); delete it") from None


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Normalizer, TrainConfig, int]:
    """(model, its normaliser, its training settings, its smoothing in frames); the model's
    streams are ``model.fused_streams``, the rows its unvoiced frames' audio reads as
    ``model.unvoiced_fill`` (``learning.train.unvoiced_audio``; None: off)."""
    saved = load_checkpoint(path, device)
    # one saved before named experiments was always its run's <model> part
    architecture = saved.get("fusion_model") or split_run(saved["model_name"])[0]
    if architecture.endswith("_iaca") and "iaca_temperature_av" not in saved["hparams"]:
        raise ValueError(f"{path}: an IACA model trained before its gates read unit-norm features (December 2026): "
                         "its gate weights mean something else now; retrain it (delete its models/ folder)")
    # a model.pt saved before inner selection picked its epoch on the validation fold and
    # never held out an inner share
    cfg = TrainConfig.from_dict({"selection": "validation", "inner_share": math.nan, **saved["train_config"]})
    streams = saved.get("streams", STREAMS_OF_OLDER_MODELS)
    model = build_fusion_model(architecture, saved["dims"], saved["hparams"], window=cfg.window,
                               streams=streams).to(device)
    model.fused_streams = streams
    model.unvoiced_fill = ({k: np.asarray(v, np.float32) for k, v in saved["unvoiced_fill"].items()}
                           if cfg.unvoiced_audio is not None else None)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), Normalizer.from_state(saved["normalizer"]), cfg, int(saved["hparams"].get("smoothing", 0))


def predict_test_trials(model_paths: list[str | Path], aligned: dict[str, Path], out_dir: str | Path,
                        device: str = "auto") -> None:
    """Average the fold models' per-frame predictions; one ``<trial>.txt`` per test trial
    (header ``valence,arousal``, one row per video frame)."""
    dev = resolve_device(device)
    models = [load_model(p, dev) for p in model_paths]
    out_dir = Path(out_dir)
    for name, path in sorted(aligned.items()):
        with h5py.File(path) as h5:  # one prediction per decoded video frame
            n_video = int(h5.attrs.get("n_video_frames", -1))
        loaded: dict[tuple[str, ...], TrialData] = {}  # the fold models of a run share their streams: read once
        predictions = []
        for m, norm, cfg, smoothing in models:
            streams = tuple(m.fused_streams["visual"] + m.fused_streams["audio"])
            if streams not in loaded:
                loaded[streams] = load_trial(path, streams)
                if n_video >= 0 and loaded[streams].length != n_video:
                    raise ValueError(f"{path}: {loaded[streams].length} rows for a video of {n_video} decoded frames")
            trial = loaded[streams]
            if m.unvoiced_fill is not None:  # as in its training: unvoiced frames' audio is missing
                trial = with_unvoiced_filled(trial, cfg.unvoiced_audio, m.unvoiced_fill, path)
            predictions.append(predict_trial(m, norm.apply(trial), cfg, dev, smoothing))
        mean = np.mean(predictions, axis=0)
        with atomic_output(out_dir / f"{name}.txt") as tmp:
            lines = ["valence,arousal"] + [f"{v:.6f},{a:.6f}" for v, a in mean]
            tmp.write_text("\n".join(lines) + "\n")
        log.info("%s: %d frames predicted from %d fold models", name, len(mean), len(models))
