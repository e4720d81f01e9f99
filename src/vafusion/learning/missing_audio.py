"""Praveen & Alam's missing-audio test (Sec. 4C, Fig. 3): at test time a share of the audio
frames is dropped (given the fill: zeros at the audio networks' input, or silence), as one
contiguous segment per trial or as scattered frames, and the validation fold is scored
again. Besides the CCCs, each share keeps every trial's sufficient statistics, so the report
can put a bootstrap interval on each point of the curve and on the difference of two models."""

from __future__ import annotations

import zlib

import numpy as np

from vafusion.learning.unit_stats import trial_stats
from vafusion.learning.data import Normalizer, StoredTrial, TrialData, read_presence
from vafusion.learning.predict import evaluate, fold_ccc
from vafusion.learning.settings import MISSING_AUDIO_PATTERNS, TrainConfig


PATTERNS = MISSING_AUDIO_PATTERNS


def missing_frames(trial: TrialData | StoredTrial, share: float, pattern: str, seed: int,
                   presence: np.ndarray | None = None, threshold: float | None = None) -> np.ndarray:
    """(T,) bool: the audio frames to drop, round(share * T) of them; the same frames for
    every model (seeded by trial name, share and pattern), so models are compared on one draw.

    ``unvoiced`` (the natural pattern, where audio carries no speech): the frames whose
    speech ``presence`` (T,) is below ``threshold``, least speech first, at most
    round(share * T): no voiced frame is ever dropped, so past the trial's unvoiced share
    the curve stays flat; its drop is that share."""
    n = int(round(share * trial.length))
    dropped = np.zeros(trial.length, bool)
    if n == 0:
        return dropped
    if pattern == "unvoiced":
        if presence is None or threshold is None:
            raise ValueError(f"{trial.name}: the unvoiced pattern needs the trial's speech presence and a threshold")
        candidates = np.flatnonzero(presence < threshold)
        dropped[candidates[np.argsort(presence[candidates], kind="stable")][:n]] = True
        return dropped
    rng = np.random.default_rng([seed, zlib.crc32(trial.name.encode()), int(round(share * 1e6)),
                                 PATTERNS.index(pattern)])
    if pattern == "contiguous":
        start = int(rng.integers(0, trial.length - n + 1))
        dropped[start:start + n] = True
    else:
        dropped[rng.choice(trial.length, size=n, replace=False)] = True
    return dropped


def drop_audio(trial: TrialData, dropped: np.ndarray, fill: dict[str, np.ndarray]) -> TrialData:
    """The trial (raw, before normalisation) with the audio features of the ``dropped``
    frames replaced by the ``fill`` rows (one per audio stream: zeros at the networks'
    input, or silence)."""
    streams = dict(trial.streams)
    for s in fill:
        x = streams[s].copy()
        x[dropped] = fill[s]
        streams[s] = x
    return TrialData(trial.name, streams, trial.labels, trial.valid)


def missing_audio_scores(model, val: list[StoredTrial], normalizer: Normalizer, fill: dict[str, np.ndarray],
                         cfg: TrainConfig, device, smoothing: int) -> tuple[dict, dict]:
    """Validation CCC with a share of the audio frames dropped (given the ``fill`` rows), per
    pattern, over all validation trials and over the longest one alone (the paper's
    one-video variant).

    ``trial_stats``: per pattern and share, every validation trial's sufficient statistics
    (``vafusion.learning.unit_stats.trial_stats``), for intervals on the curve.

    For a model with an IACA gate also: the mean stage-2 gate weights (G_av0..2: audio,
    visual, joint) on the dropped and on the kept frames of all validation trials, per
    share, and, as the second value, the longest trial's gate weights at the largest share
    ({pattern: {"share", "dropped" (T,), "gates" (T, 7)}}), to show where the gate moves."""
    longest = max(val, key=lambda t: t.length, default=None)
    results: dict = {"longest_trial": longest.name if longest else None, "fill": cfg.missing_audio.fill}
    traces: dict = {}
    voice = cfg.missing_audio.voice
    presence = ({t.name: read_presence(t.path, voice.stream) for t in val}
                if "unvoiced" in cfg.missing_audio.patterns else {})
    if presence:  # the natural share the unvoiced curve flattens at
        n_unvoiced = sum(int((p < voice.threshold).sum()) for p in presence.values())
        results["unvoiced_share"] = n_unvoiced / max(1, sum(len(p) for p in presence.values()))
    for pattern in cfg.missing_audio.patterns:
        results[pattern] = {"all_trials": {}, "longest_trial": {}}
        for share in cfg.missing_audio.shares:
            dropped = {t.name: missing_frames(t, share, pattern, cfg.seed, presence.get(t.name),
                                              voice.threshold if voice else None) for t in val}

            def with_audio_dropped(t: StoredTrial) -> TrialData:
                return normalizer.apply(drop_audio(t.load(), dropped[t.name], fill))

            scores, predictions, gates = evaluate(model, val, cfg, device, smoothing, with_audio_dropped)
            results[pattern]["all_trials"][f"{share:g}"] = scores
            # per trial and target: n, sums of x, y, x^2, y^2, xy (the bootstrap's unit statistics)
            results[pattern].setdefault("trial_stats", {})[f"{share:g}"] = {
                t.name: trial_stats(predictions[t.name], t.labels, t.valid).tolist() for t in val}
            if longest is not None:
                results[pattern]["longest_trial"][f"{share:g}"] = fold_ccc(predictions, [longest])
            if gates:
                results[pattern].setdefault("gates", {})[f"{share:g}"] = {
                    part: mean_stage2_gates(gates, dropped, part == "dropped") for part in ("dropped", "kept")}
                if longest is not None and share == max(cfg.missing_audio.shares):
                    traces[pattern] = {"share": share, "dropped": dropped[longest.name], "gates": gates[longest.name]}
    return results, traces


def mean_stage2_gates(gates: dict[str, np.ndarray], frames: dict[str, np.ndarray], select: bool) -> list[float] | None:
    """Mean G_av0..2 over the frames where ``frames[trial] == select``, all trials pooled;
    None when there is no such frame."""
    chosen = [g[frames[name] == select, 4:7] for name, g in gates.items()]
    pooled = np.concatenate(chosen) if chosen else np.zeros((0, 3))
    return pooled.mean(axis=0).tolist() if len(pooled) else None


