"""Lin's concordance correlation coefficient, the ABAW valence/arousal metric, and the
training loss 2 - CCC_valence - CCC_arousal."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)


def ccc(prediction: np.ndarray, target: np.ndarray) -> float:
    """CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2), population moments.

    NaN (with a warning) when there is no frame, or when both series are the same constant
    (the coefficient is undefined there).
    """
    x = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.size == 0:
        log.warning("CCC over no valid frame: NaN")
        return math.nan
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    if denom == 0:
        log.warning("CCC of two identical constant series is undefined: NaN")
        return math.nan
    return float(2 * cov / denom)


def ccc_torch(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable CCC over the frames where ``valid`` is True (all dims flattened)."""
    x = prediction[valid].float()
    y = target[valid].float()
    if x.numel() == 0:
        return prediction.sum() * 0.0  # no valid frame in the batch: no gradient signal
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (x.var(unbiased=False) + y.var(unbiased=False) + (mx - my) ** 2 + eps)


def ccc_loss(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """2 - CCC_valence - CCC_arousal; tensors (B, L, 2), ``valid`` (B, L, 2) bool."""
    return 2 - ccc_torch(prediction[..., 0], target[..., 0], valid[..., 0]) \
             - ccc_torch(prediction[..., 1], target[..., 1], valid[..., 1])
