"""A bfloat16 path that checks itself: before a job trusts bfloat16 autocast, one short
probe runs the network in float32 and under autocast and compares them.

Why: oneDNN's bfloat16 kernels are wrong on some CPUs for some shapes (measured on a Xeon
with AMX / AVX512-BF16: a grouped convolution with 2 channels per group and a 128-tap
kernel gave 80-106 % relative error, against 0.3 % with oneDNN off; pytorch/pytorch#169688,
#163347). Such an error is silent: the features or the trained model are simply wrong. So
every job that would run bfloat16 (the speech models' ``precision: bfloat16`` on the CPU,
training with ``learning.train.precision: bfloat16``, and the ``auto`` paths on CUDA)
probes first; when the two disagree it falls back to float32, warns naming the layer kind
that went wrong, and records the fallback with its outputs.

Disagreement: the relative L2 error of the network's output, ||bf16 - f32|| / ||f32||,
above ``TOLERANCE``. bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %
per value); a healthy network accumulates 0.3-3 % over its layers (0.3 % measured on a
wav2vec2 stand-in, the training models' logits a few %), a broken kernel tens of %.
The layer named is the first one, in the order the forward pass finishes them, whose own
output is off by more than the tolerance (errors spread downstream from there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

TOLERANCE = 0.1


@dataclass(frozen=True)
class ProbeResult:
    agrees: bool
    error: float  # relative L2 error of the output, bfloat16 autocast against float32
    layer: str | None  # the first layer whose output disagrees ("Conv1d (16 groups of 2 channels, kernel 128)")

    def describe(self) -> str:
        if self.agrees:
            return f"bfloat16 autocast agrees with float32 on the probe (relative error {self.error:.3g})"
        return (f"bfloat16 autocast DISAGREES with float32 on the probe (relative error {self.error:.3g}, first in "
                f"{self.layer or 'the output'}): float32 is used instead")


def layer_kind(module: nn.Module) -> str:
    """A layer's kind with the shape facts that decide which kernel runs."""
    name = type(module).__name__
    if isinstance(module, nn.modules.conv._ConvNd):
        per_group = module.in_channels // module.groups
        kernel = "x".join(map(str, module.kernel_size))
        groups = f"{module.groups} groups of {per_group} channels" if module.groups > 1 else \
            f"{module.in_channels} channels"
        return f"{name} ({groups}, kernel {kernel})"
    if isinstance(module, nn.Linear):
        return f"{name} ({module.in_features} -> {module.out_features})"
    return name


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    approx, exact = approx.detach().double(), exact.detach().double()
    scale = float(torch.linalg.vector_norm(exact))
    diff = float(torch.linalg.vector_norm(approx - exact))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            found = _first_tensor(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        for v in value.values():
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


def _run_recording(model: nn.Module, forward: Callable[[], torch.Tensor], device_type: str,
                   bf16: bool) -> tuple[torch.Tensor, list[tuple[nn.Module, torch.Tensor]]]:
    """The output and every layer's first output tensor, in the order they finish (a layer
    after the layers inside it: a parametrised convolution is not a leaf, yet its own output
    must be seen)."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module, args, output):
        tensor = _first_tensor(output)
        if tensor is not None and tensor.is_floating_point():
            seen.append((module, tensor.detach().float().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            output = forward()
    finally:
        for h in handles:
            h.remove()
    return _first_tensor(output).detach().float(), seen


def probe_bf16(model: nn.Module, forward: Callable[[], torch.Tensor], device_type: str,
               tolerance: float = TOLERANCE) -> ProbeResult:
    """Run ``forward()`` (the model on a short probe input) in float32 and under bfloat16
    autocast on ``device_type``, and compare. The model's training/eval mode is kept; in
    training mode dropout differs between the two runs, so call it in eval mode."""
    exact, exact_layers = _run_recording(model, forward, device_type, bf16=False)
    approx, approx_layers = _run_recording(model, forward, device_type, bf16=True)
    error = relative_error(approx, exact)
    if error <= tolerance:
        return ProbeResult(True, error, None)
    culprit = None
    for (module, a), (_, e) in zip(approx_layers, exact_layers):
        if a.shape == e.shape and relative_error(a, e) > tolerance:
            culprit = layer_kind(module)
            break
    return ProbeResult(False, error, culprit)


def checked_bf16(model: nn.Module, forward: Callable[[], torch.Tensor], device_type: str, what: str) -> ProbeResult:
    """``probe_bf16`` with the warning a job log needs when bfloat16 is refused."""
    result = probe_bf16(model, forward, device_type)
    if result.agrees:
        log.info("%s: %s", what, result.describe())
    else:
        log.warning("!!! %s: %s. This is a known class of oneDNN bfloat16 kernel bugs on some CPUs "
                    "(pytorch/pytorch#169688); the outputs are float32 and say so in their provenance !!!",
                    what, result.describe())
    return result
