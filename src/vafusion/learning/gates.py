"""Does an IACA gate choose per frame? Diagnostics of the stage-2 gate weights G_av (audio,
visual, joint candidates) of one training's validation frames, and the verdicts the report
flags.

- ``share_above_099``: frames whose largest G_av exceeds 0.99 (a one-hot pick);
- ``mean_entropy``: the mean over frames of -sum_k G_av,k ln G_av,k, in nats (0: one-hot;
  ln 3 = 1.10: uniform);
- ``most_used`` / ``share_off_most_used``: the candidate with the largest weight on most
  frames, and the share of frames where another one has the largest weight;
- ``dropped`` / ``kept``: per missing-audio pattern, the mean G_av on the dropped and on the
  kept audio frames at the largest share dropped, and ``shift``, the largest absolute
  difference between the two over the three candidates.

Verdicts: *constant*, the same candidate on (almost) every frame (``share_off_most_used``
below ``CONSTANT_OFF``) and picked one-hot (``share_above_099`` at least ``ONE_HOT``) or
hardly moving at all (the frames' G_av vary by less than ``STILL`` in standard deviation);
*ignores audio*, the gate's weights on dropped-audio frames equal those on kept frames
(``shift`` below ``STILL``) for every pattern. A constant gate makes IACA a fixed choice of
one candidate, and its flat missing-audio curve then says nothing about robustness.
"""

from __future__ import annotations

import math

import numpy as np

CANDIDATES = ("audio", "visual", "joint")  # G_av0, G_av1, G_av2
CONSTANT_OFF = 0.01
ONE_HOT = 0.9
STILL = 0.02


def gate_diagnostics(gates: list[np.ndarray], missing_audio: dict | None = None) -> dict:
    """``gates``: per validation trial its (T, 7) gate weights (``predict.GATE_COLUMNS``; the
    stage-2 ones are columns 4-6); ``missing_audio``: a training's ``missing_audio`` record
    (per pattern ``gates``: {share: {"dropped", "kept"}}), or None."""
    stage2 = np.concatenate([np.asarray(g, np.float64)[:, 4:7] for g in gates]) if gates else np.zeros((0, 3))
    if len(stage2) == 0:
        return {"frames": 0}
    picks = stage2.argmax(axis=1)
    most = int(np.bincount(picks, minlength=3).argmax())
    p = np.clip(stage2, 1e-12, 1.0)
    out = {"frames": int(len(stage2)),
           "share_above_099": float((stage2.max(axis=1) > 0.99).mean()),
           "mean_entropy": float(-(p * np.log(p)).sum(axis=1).mean()),
           "most_used": CANDIDATES[most],
           "share_off_most_used": float((picks != most).mean()),
           "spread": float(stage2.std(axis=0).max()),
           "mean": stage2.mean(axis=0).tolist()}
    shifts = {}
    for pattern, record in (missing_audio or {}).items():
        if not isinstance(record, dict) or "gates" not in record:
            continue
        shares = [s for s, parts in record["gates"].items() if parts.get("dropped") is not None]
        if not shares:
            continue
        share = max(shares, key=float)
        dropped, kept = record["gates"][share]["dropped"], record["gates"][share]["kept"]
        shift = float(np.max(np.abs(np.asarray(dropped) - np.asarray(kept)))) if kept is not None else math.nan
        shifts[pattern] = {"share": float(share), "dropped": list(dropped),
                           "kept": list(kept) if kept is not None else None, "shift": shift}
    out["missing_audio"] = shifts
    out["constant"] = bool(out["share_off_most_used"] < CONSTANT_OFF
                           and (out["share_above_099"] >= ONE_HOT or out["spread"] < STILL))
    finite = [s["shift"] for s in shifts.values() if not math.isnan(s["shift"])]
    out["ignores_audio"] = bool(finite) and max(finite) < STILL
    return out
