"""The networks behind ``features.face_models`` (``vafusion.features.backbones``): a timm
model filled from a checkpoint, or an ONNX file in onnxruntime, each a callable taking the
preprocessed faces, (N, 3, S, S) float32, to one row per face, (N, D). ``build_runner``
picks one for an entry; each runner checks at its start what needs the file (the
checkpoint's keys; the ONNX input and output names and input shape) and its ``trial``, the
first forward pass, the input size the network accepts.

Kinds:

- ``timm``: ``timm.create_model(architecture, pretrained=False)`` filled from ``weights``, a
  ``.safetensors`` file or a PyTorch state dict (``torch.load(weights_only=True)``: never
  unpickled; the wrappers ``{"state_dict": ...}`` and ``{"model": ...}`` and DataParallel's
  ``module.`` prefix are taken off, nothing else). Run in torch, in inference mode,
  channels-last; on CUDA under bfloat16 autocast once a probe on the trial's first face
  agrees with float32 (``vafusion.precision``), else float32.
- ``onnx``: the file run by onnxruntime, on its CUDA provider when the job's device is CUDA
  and the installed onnxruntime has one (else on the CPU, warned), ``threads`` intra-op
  threads. A fixed batch size in the model's input is honoured (the last batch padded).

``output`` (which values make the row, flattened per face):

- timm: ``pooled`` (the default): the classifier's input,
  ``forward_head(forward_features(x), pre_logits=True)``; ``logits``: the classifier's
  output; or the name of a module (``blocks.5``, as ``model.named_modules()`` names it):
  its output, globally average-pooled when spatial (4-D: over H and W, as the model's
  ``output_fmt`` lays them out; 3-D tokens: over the tokens).
- onnx: the name of a graph output (null: the first), or of any tensor inside the graph
  (it is made an extra output): e.g. the input of HSEmotion's final Gemm, the embedding the
  classifier sees. An unknown name is refused with the outputs and the tensors feeding the
  last node listed.

The classifier of a timm checkpoint (``pretrained_cfg["classifier"]``: ``classifier``,
``head.fc``, ``head``, ...) may have any class count: the network is built with the count
the file's classifier weight has. With ``output: pooled`` the classifier is not built at
all (``num_classes=0``), so its keys may be absent or of any shape. ``logits`` needs them.
Every other key must fit exactly (BatchNorm's ``num_batches_tracked`` may be absent: a
counter inference never reads); a file that does not fit is refused with the missing,
unexpected and wrongly shaped keys named and counted.

Each refusal names its key, ``features.face_models.<name>.<key>``. torch, timm, onnx and
onnxruntime are imported only inside the runners (``backbones`` imports this module only
when a job starts).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vafusion.features.backbones import SECTION, FaceModelError, FaceModelSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TIMM_OUTPUTS = ("pooled", "logits")
SHOWN = 5  # keys named in a refusal, of each kind


# --- weights ---------------------------------------------------------------------------------

def read_checkpoint(path: Path, key: str) -> dict:
    """A timm checkpoint's {name: tensor}: safetensors by its suffix, anything else through
    ``torch.load(weights_only=True)`` (``vafusion.weights.read_state_dict``: the
    ``state_dict`` / ``model`` wrappers and ``module.`` prefixes come off)."""
    from vafusion.features.ssl_checkpoints import read_safetensors
    from vafusion.weights import WeightsError, read_state_dict

    if not path.is_file():
        raise WeightsError(f"{key}: '{path}' does not exist")
    try:
        if path.suffix.lower() == ".safetensors":
            state = read_safetensors(path)
            if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
                state = {k[len("module."):]: v for k, v in state.items()}
            return state
        return read_state_dict(path, key)
    except WeightsError as err:
        raise WeightsError(f"{key}: {err}") from None


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
    return f"{len(items)} {title} ({shown})"


def _common_prefix(keys) -> str | None:
    firsts = {k.split(".", 1)[0] for k in keys}
    return next(iter(firsts)) if len(firsts) == 1 and all("." in k for k in keys) else None


# --- timm ------------------------------------------------------------------------------------

def _as_tuple(names) -> tuple[str, ...]:
    return () if not names else (names,) if isinstance(names, str) else tuple(names)


def classifier_names(model) -> tuple[str, ...]:
    """The names of a timm model's classifier module(s) (``get_classifier()``; two for the
    distilled ViTs), as its state dict's keys start."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return tuple(name for name, module in model.named_modules() if name and any(module is h for h in heads))


class TimmRunner:
    """A timm model filled from a checkpoint, on a device: (N, 3, S, S) float32 -> (N, D)."""

    def __init__(self, name: str, spec: FaceModelSpec, device: "torch.device"):
        import timm
        import torch

        from vafusion.weights import WeightsError

        self.key, self.spec, self.device = f"{SECTION}.{name}", spec, device
        self.output = spec.output or "pooled"
        path = Path(spec.weights)
        state = read_checkpoint(path, f"{self.key}.weights")
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
        cfg = dict(model.pretrained_cfg)
        prefixes = classifier_names(model) or _as_tuple(cfg.get("classifier"))
        head = {k for k in state if any(k.startswith(p + ".") for p in prefixes)}
        head_weight = next((state[f"{p}.weight"] for p in prefixes if f"{p}.weight" in state), None)
        file_classes = int(head_weight.shape[0]) if head_weight is not None else None
        if self.output == "logits" and file_classes is None:
            wanted = ", ".join(p + ".weight" for p in prefixes)
            raise WeightsError(f"{self.key}.output: logits needs the classifier's weights ({wanted}), which '{path}' "
                               f"does not hold; use output: pooled (the classifier's input)")
        # pooled: no classifier at all, so the file's may be absent or of any class count
        num_classes = 0 if self.output == "pooled" or file_classes is None else file_classes
        if num_classes:
            model = timm.create_model(spec.architecture, pretrained=False, num_classes=num_classes)
        else:
            state = {k: v for k, v in state.items() if k not in head}
        self.classifier = ("not in the file" if file_classes is None else
                           f"{file_classes} classes in the file, " +
                           ("not used (output pooled)" if num_classes == 0 else "loaded"))
        expected = model.state_dict()
        self._check_fit(path, state, expected)
        for k in set(expected) - set(state):  # only BatchNorm's counters, which inference never reads
            state[k] = expected[k]
        model.load_state_dict(state, strict=True)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.pretrained_cfg = cfg
        self.num_classes = num_classes
        self.bf16 = device.type == "cuda"
        self.bf16_probe = None
        self.module = None
        if self.output not in TIMM_OUTPUTS:
            modules = dict(self.model.named_modules())
            if self.output not in modules:
                names = [n for n in modules if n]
                close = difflib.get_close_matches(self.output, names, n=5, cutoff=0.5)
                hint = f"; close names: {', '.join(close)}" if close else ""
                top = [n for n, _ in self.model.named_children()]
                raise FaceModelError(
                    f"{self.key}.output: timm's {spec.architecture} has no module '{self.output}' (pooled, logits, or "
                    f"a module name as model.named_modules() gives it){hint}; its top-level modules: {', '.join(top)}")
            self.module = modules[self.output]
        self.channels_hwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

    def _check_fit(self, path: Path, state: dict, expected: dict) -> None:
        from vafusion.weights import WeightsError

        # BatchNorm's num_batches_tracked may be absent (converted checkpoints often lack it)
        missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(f"{k}: file {tuple(state[k].shape)}, network {tuple(expected[k].shape)}"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if not (missing or unexpected or wrong):
            return
        parts = [_listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                       ("wrong shapes", wrong)) if items]
        hint = ""
        prefix = _common_prefix(state)
        if prefix and not any(k.startswith(prefix + ".") for k in expected):
            hint = (f" All the file's keys start with '{prefix}.': it wraps the network in another module; "
                    f"save that module's state_dict() alone.")
        raise WeightsError(
            f"{self.key}.weights: '{path}' does not fit timm's {self.spec.architecture} "
            f"({self.key}.architecture): {'; '.join(parts)}.{hint} Check that the architecture is the one the "
            f"checkpoint was trained as (the same timm name and variant).")

    @property
    def input_device(self) -> "torch.device":
        return self.device

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self.output == "pooled":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if self.output == "logits":
            return self.model(x)
        seen = []
        handle = self.module.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        out = seen[0]
        while isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 4:  # spatial: global average over H and W
            out = out.mean(dim=(1, 2) if self.channels_hwc else (2, 3))
        elif out.dim() == 3:  # tokens (N, L, C): their average
            out = out.mean(dim=1)
        return torch.flatten(out, 1)

    def __call__(self, x: "torch.Tensor") -> np.ndarray:
        import torch

        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return self._forward(x).float().cpu().numpy().reshape(len(x), -1)

    def trial(self, x: "torch.Tensor", what: str) -> np.ndarray:
        """The first forward pass (float32), with its failure told as a configuration
        problem; on CUDA also the bfloat16 probe."""
        import torch

        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                out = self._forward(x).float().cpu().numpy().reshape(len(x), -1)
        except (RuntimeError, AssertionError, ValueError) as err:
            wanted = self.pretrained_cfg.get("input_size")
            said = (f"; timm's pretrained configuration of {self.spec.architecture} has a "
                    f"{wanted[-2]}x{wanted[-1]} input" if wanted else "")
            raise FaceModelError(
                f"{self.key}.input_size: timm's {self.spec.architecture} rejected a {x.shape[-2]}x{x.shape[-1]} input "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}){said}; set input_size to a "
                f"size the network takes") from None
        if self.bf16:
            from vafusion.precision import checked_bf16

            self.bf16_probe = checked_bf16(self.model, lambda: self._forward(x), "cuda", what)
            self.bf16 = self.bf16_probe.agrees
        return out

    def describe(self) -> dict:
        import timm

        cfg = self.pretrained_cfg
        return {"timm_version": timm.__version__, "num_classes_built": self.num_classes,
                "classifier": self.classifier, "channels_last": True,
                "autocast": "bfloat16" if self.bf16 else "none (float32)",
                "timm_pretrained_cfg": {k: cfg.get(k) for k in ("input_size", "mean", "std", "interpolation",
                                                                 "crop_pct")},
                **({"bf16_probe": self.bf16_probe.describe()} if self.bf16_probe is not None else {})}

    def warn_if_unlike_timm(self) -> None:
        """timm's own preprocessing for the architecture, when it differs from the entry's:
        a hint only (a fine-tuned checkpoint may have been trained with other values)."""
        cfg, spec = self.pretrained_cfg, self.spec
        differs = []
        for k, mine in (("mean", spec.mean), ("std", spec.std)):
            if cfg.get(k) and not np.allclose(cfg[k], mine, atol=1e-3):
                differs.append(f"{k} {list(mine)} (timm: {list(cfg[k])})")
        if cfg.get("input_size") and tuple(cfg["input_size"][-2:]) != (spec.input_size, spec.input_size):
            differs.append(f"input_size {spec.input_size} (timm: {cfg['input_size'][-1]})")
        if differs:
            log.warning("%s: %s differ from timm's pretrained configuration of %s; right if the checkpoint was "
                        "trained so, else set them to timm's", self.key, ", ".join(differs), spec.architecture)


# --- ONNX ------------------------------------------------------------------------------------

ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"


class OnnxRunner:
    """An ONNX file in an onnxruntime session: (N, 3, S, S) float32 -> (N, D)."""

    def __init__(self, name: str, spec: FaceModelSpec, device: "torch.device", threads: int):
        import onnxruntime as ort
        import torch

        from vafusion.weights import WeightsError

        self.key, self.spec = f"{SECTION}.{name}", spec
        self.path = Path(spec.weights)
        if not self.path.is_file():
            raise WeightsError(f"{self.key}.weights: '{self.path}' does not exist")
        available = ort.get_available_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" in available:
            self.providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            if device.type == "cuda":
                log.warning("!!! %s: the job runs on %s but onnxruntime %s has no CUDA provider (providers: %s); the "
                            "ONNX model runs on the CPU. Install onnxruntime-gpu for the GPU. !!!", self.key, device,
                            ort.__version__, ", ".join(available))
            self.providers = ["CPUExecutionProvider"]
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = max(1, int(threads))
        self.options.inter_op_num_threads = 1
        self.options.log_severity_level = 3  # errors only: its warnings are about graph optimisation
        self.session = self._session(str(self.path))
        inputs = self.session.get_inputs()
        listed = ", ".join(f"'{i.name}' {_shape_text(i.shape)} {i.type}" for i in inputs)
        if spec.input is None:
            if len(inputs) != 1:
                raise FaceModelError(f"{self.key}.input: '{self.path}' has {len(inputs)} inputs ({listed}); name the "
                                     f"one that takes the faces")
            self.input = inputs[0]
        else:
            self.input = next((i for i in inputs if i.name == spec.input), None)
            if self.input is None:
                raise FaceModelError(f"{self.key}.input: '{self.path}' has no input '{spec.input}'; its inputs: "
                                     f"{listed}")
        self._check_input()
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = spec.output or outputs[0]
        self.intermediate = self.output not in outputs
        if self.intermediate:
            self.session = self._session_with_output(self.output, outputs)
        self.device = torch.device("cpu")  # the input is handed over as a numpy array

    def _session(self, model):
        import onnxruntime as ort

        from vafusion.weights import WeightsError

        try:
            return ort.InferenceSession(model, sess_options=self.options, providers=self.providers)
        except Exception as err:  # noqa: BLE001 - any failure here means an unusable file
            raise WeightsError(f"{self.key}.weights: '{self.path}' cannot be loaded by onnxruntime (not an ONNX model, "
                               f"or one it cannot run): {str(err).strip().splitlines()[0]}") from None

    def _check_input(self) -> None:
        shape, size = list(self.input.shape), self.spec.input_size
        if self.input.type not in ONNX_TYPES:
            raise FaceModelError(f"{self.key}.input: '{self.input.name}' takes {self.input.type}; a face network's "
                                 f"input must be float, float16 or double")
        if len(shape) != 4:
            raise FaceModelError(f"{self.key}.input: '{self.input.name}' has shape {_shape_text(shape)}; faces go in "
                                 f"as a 4-D batch (N, 3, H, W) or (N, H, W, 3)")
        # channels first unless the fixed sizes say channels last (a TensorFlow export)
        self.channels_last = shape[1] != 3 and shape[3] == 3
        channels, height, width = (shape[3], shape[1], shape[2]) if self.channels_last else shape[1:]
        if isinstance(channels, int) and channels != 3:
            raise FaceModelError(f"{self.key}.input: '{self.input.name}' has shape {_shape_text(shape)}, with "
                                 f"{channels} channels; faces have 3")
        fixed = [d for d in (height, width) if isinstance(d, int) and d > 0]
        if any(d != size for d in fixed):
            wants = f"{height}x{width}" if len(fixed) == 2 else "a side of " + str(fixed[0])
            raise FaceModelError(f"{self.key}.input_size: '{self.path}' takes {wants} pixels (input "
                                 f"'{self.input.name}' {_shape_text(shape)}), not {size}x{size}; set input_size: "
                                 f"{fixed[0]}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.dtype = ONNX_TYPES[self.input.type]

    def _session_with_output(self, wanted: str, outputs: list[str]):
        """A session whose outputs include the graph's inner tensor ``wanted``."""
        import onnx

        model = onnx.load(str(self.path))
        produced = {out for node in model.graph.node for out in node.output if out}
        if wanted not in produced:
            last = model.graph.node[-1] if model.graph.node else None
            constants = {t.name for t in model.graph.initializer}
            feeding = [i for i in (last.input if last is not None else []) if i and i not in constants]
            hint = (f"; the last node ({last.op_type}) is fed by {', '.join(repr(i) for i in feeding)} (name one of "
                    f"them for the values before it)" if feeding else "")
            raise FaceModelError(f"{self.key}.output: '{self.path}' has no output or inner tensor '{wanted}'; its "
                                 f"outputs: {', '.join(repr(o) for o in outputs)}{hint}")
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        model.graph.output.append(inferred.get(wanted) or onnx.helper.make_tensor_value_info(
            wanted, onnx.TensorProto.FLOAT, None))
        return self._session(model.SerializeToString())

    @property
    def input_device(self) -> "torch.device":
        return self.device

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output], {self.input.name: x})[0])

    def __call__(self, x: "torch.Tensor") -> np.ndarray:
        n = len(x)
        x = x.permute(0, 2, 3, 1) if self.channels_last else x
        x = np.ascontiguousarray(x.cpu().numpy(), dtype=self.dtype)
        if self.fixed_batch is None:
            out = self._run(x)
            if out.ndim == 0 or out.shape[0] != n:
                raise FaceModelError(f"{self.key}.output: '{self.output}' has shape {list(out.shape)} for a batch of "
                                     f"{n} faces: not one row per face; name another output")
            return out.reshape(n, -1).astype(np.float32)
        rows = []
        for lo in range(0, n, self.fixed_batch):  # the model takes exactly fixed_batch faces: pad the last batch
            part = x[lo:lo + self.fixed_batch]
            pad = self.fixed_batch - len(part)
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            rows.append(self._run(part).reshape(self.fixed_batch, -1)[:len(part) - pad])
        return np.concatenate(rows).astype(np.float32)

    def trial(self, x: "torch.Tensor", what: str) -> np.ndarray:
        try:
            return self(x)
        except FaceModelError:
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime's errors share no useful base class
            shape = _shape_text(self.input.shape)
            raise FaceModelError(
                f"{self.key}.input_size: '{self.path}' failed on a {self.spec.input_size}x{self.spec.input_size} "
                f"input (input '{self.input.name}' {shape}): {str(err).strip().splitlines()[0]}; set input_size to the "
                f"size the network was exported for") from None

    def describe(self) -> dict:
        import onnxruntime as ort

        outputs = {o.name: _shape_text(o.shape) for o in self.session.get_outputs()}
        return {"onnxruntime_version": ort.__version__, "providers": self.session.get_providers(),
                "onnx_input": f"{self.input.name} {_shape_text(self.input.shape)} {self.input.type}",
                "onnx_input_layout": "NHWC" if self.channels_last else "NCHW",
                "onnx_output": f"{self.output} {outputs.get(self.output, '')}".strip(),
                "onnx_output_inner": self.intermediate,
                **({"onnx_fixed_batch": self.fixed_batch} if self.fixed_batch else {})}

    def warn_if_unlike_timm(self) -> None:
        pass


# --- either ----------------------------------------------------------------------------------

def build_runner(name: str, spec: FaceModelSpec, device: "torch.device", threads: int):
    """The entry's network, ready to run on ``device`` (an ONNX model: ``threads`` threads)."""
    return TimmRunner(name, spec, device) if spec.kind == "timm" else OnnxRunner(name, spec, device, threads)

