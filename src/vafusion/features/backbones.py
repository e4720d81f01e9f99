"""Face networks named in the config: one visual stream per entry of ``features.face_models``.

Researchers hold emotion-pretrained face networks (HSEmotion / EmotiEffLib EfficientNets as
ONNX files; timm checkpoints of EfficientNet, ConvNeXt, ViT, CLIP image towers). Each entry
of ``features.face_models`` is a stream, named by its key, whose rows are one network
output per video frame, computed on the trial's aligned faces (``faces/<trial>.h5``).

This module holds the entry (``FaceModelSpec``: its checks at planning, ``spec_problems``,
and ``resolve_spec``), the preprocessing of the faces and the stream's job (``extract``,
``extract_face_model``). The networks themselves, a timm model (``kind: timm``) or an ONNX
file in onnxruntime (``kind: onnx``), and what ``output`` means for each, are
``vafusion.features.backbone_runners``.

An entry's keys, their types, bounds and defaults are its schema's: ``face_model`` in
``builtin.schema.yaml`` (``vafusion.features.registry.builtin_schema``), the one source of
the defaults (``spec_defaults``). The workflow validates the config against it, filling in
the defaults, before it calls ``spec_problems``; ``resolve_spec`` fills them in for a direct
caller.

Preprocessing, on the 112x112 RGB aligned face (``vafusion.faces``): keep the centred
``round(112 * crop)``-pixel square (top-left corner at ``(112 - side) // 2``), resize it to
``input_size`` x ``input_size`` (bilinear with antialiasing: torch's ``interpolate(...,
mode="bilinear", antialias=True, align_corners=False)``, the filter PIL's BILINEAR uses; when
enlarging this is plain bilinear interpolation with pixel centres at half-integers, as
OpenCV's INTER_LINEAR), reorder the channels (``colour``: rgb or bgr), divide by ``scale``,
then ``(x - mean) / std`` per channel (mean and std in the network's channel order), NCHW
float32 (NHWC when an ONNX input is laid out so). No rounding to 8 bits after the resize.

Frames without a face (``face_found`` false) take the row of the last face found (the first
face found for a leading gap), as ``vafusion.features.dlib_face`` does; a trial without any
face gets all-zero rows. The mask is copied to the output.

Checks: the schema's (keys, types, enums, bounds), then ``spec_problems`` (cheap, at
planning: what the schema cannot tell, e.g. the weights file's presence and suffix against
the kind, the timm architecture's name; importing timm costs 1.3-2 s when torch is already
loaded, and only when a timm model is configured), then at the job's start what needs the
file: the checkpoint's keys, the ONNX input and output names and input shape, and a trial
forward on the trial's first face (the input size the network accepts, the output's width
against ``valence_arousal``). Each refusal names its key, ``features.face_models.<name>.<key>``.

This module imports torch, timm and onnxruntime only inside the functions that run a job,
so that the workflow can call ``spec_problems`` when it is parsed.
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vafusion.features.registry import builtin_schema

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SECTION = "features.face_models"
FACE_SIZE = 112  # the aligned faces' side (vafusion.faces)
MAX_INPUT_SIZE = 4096  # input_size's upper bound (the schema has the lower one)
TORCH_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
RESIZE = "bilinear, antialias (torch interpolate, align_corners=False)"


class FaceModelError(ValueError):
    """A face model's configuration that cannot work (with its file, or with the faces)."""


@dataclass(frozen=True)
class FaceModelSpec:
    """One entry of ``features.face_models``, every key set (``resolve_spec`` fills in the
    defaults, which are the schema's: ``spec_defaults``)."""

    kind: str
    weights: str | None
    architecture: str | None
    input_size: int
    crop: float
    colour: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: str | None
    output: str | None
    valence_arousal: tuple[int, int] | None
    batch_size: int

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("weights")  # recorded as the file's path and sha256
        for key in ("mean", "std", "valence_arousal"):
            out[key] = None if out[key] is None else list(out[key])
        return out


# --- the entry: its defaults and checks ------------------------------------------------------

@functools.cache
def _schema_defaults() -> dict:
    return {key: prop["default"] for key, prop in builtin_schema("face_model")["properties"].items()
            if "default" in prop}


def spec_defaults() -> dict:
    """The default of each key of an entry but kind and weights (which it must set): its
    schema's, ``builtin_schema("face_model")["properties"][key]["default"]`` (a copy)."""
    return copy.deepcopy(_schema_defaults())


def crop_side(crop: float) -> int:
    """Pixels kept of the 112-pixel face's side."""
    return max(1, min(FACE_SIZE, round(FACE_SIZE * crop)))


def close_timm_names(architecture: str, limit: int = 6) -> list[str]:
    """timm models whose names resemble ``architecture`` (a typo, '-' for '_', a missing
    prefix): the pattern match ``*<name>*`` first, then difflib's closest names."""
    import timm

    base = architecture.split(".")[0].lower().replace("-", "_")
    names = timm.list_models()
    found = [n for n in timm.list_models(f"*{base}*") if n != architecture]
    found += [n for n in difflib.get_close_matches(base, names, n=limit, cutoff=0.6) if n not in found]
    return found[:limit]


def timm_architecture_problem(key: str, architecture: str) -> str | None:
    """None when timm builds ``architecture`` (a model name, optionally with a pretrained
    tag: ``vit_base_patch16_clip_224.openai``), else the problem with close names."""
    try:
        import timm
    except ImportError:
        return f"{key}: timm is not installed (pip install timm), so no timm architecture can be built"
    if timm.is_model(architecture):
        name, _, tag = architecture.partition(".")
        if not tag or tag in timm.list_pretrained(f"{name}.*") or f"{name}.{tag}" in timm.list_pretrained():
            return None
        return (f"{key}: timm's {name} has no pretrained tag '{tag}' (its tags: "
                f"{', '.join(t.partition('.')[2] for t in timm.list_pretrained(f'{name}.*')) or 'none'}); "
                f"drop the tag or pick one of them")
    close = close_timm_names(architecture)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return (f"{key}: timm {timm.__version__} has no model '{architecture}'{hint} (all of them: "
            f"python -c \"import timm; print(timm.list_models('*{architecture.split('.')[0][:8]}*'))\")")


def spec_problems(name: str, spec: dict) -> list[str]:
    """What in ``features.face_models.<name>`` cannot work that its schema cannot tell, each
    naming its key; empty when it can. ``spec`` has passed the schema (the workflow validates
    the config first), so keys, types, enums and bounds are not checked again here. Reads no
    weights file (it checks that the file is there); imports timm only for a timm entry's
    architecture."""
    key = f"{SECTION}.{name}"
    value = {**spec_defaults(), **spec}
    kind, weights, architecture = value.get("kind"), value.get("weights"), value["architecture"]
    problems = []
    if weights is None or not str(weights).strip():
        problems.append(f"{key}.weights: not set; a face model needs its file (timm: .safetensors or a state "
                        f"dict .pt/.pth; onnx: .onnx). A randomly initialised network would give meaningless "
                        f"features, so there is no fallback")
    else:
        path = Path(weights)
        if not path.is_file():
            problems.append(f"{key}.weights: '{path}' does not exist or is not a file")
        suffix = path.suffix.lower()
        if kind == "timm" and suffix == ".onnx":
            problems.append(f"{key}.weights: '{path}' is an ONNX file; set {key}.kind: onnx")
        if kind == "onnx" and suffix in TORCH_SUFFIXES:
            problems.append(f"{key}.weights: '{path}' looks like a PyTorch checkpoint, not an ONNX file; set "
                            f"{key}.kind: timm (with its architecture) or export the network to ONNX")

    if kind == "timm":
        if not isinstance(architecture, str) or not architecture.strip():
            problems.append(f"{key}.architecture: a timm entry needs the timm model's name (e.g. efficientnet_b0, "
                            f"convnext_tiny, vit_base_patch16_clip_224), not {architecture!r}")
        elif problem := timm_architecture_problem(f"{key}.architecture", architecture):
            problems.append(problem)
        if value["input"] is not None:
            problems.append(f"{key}.input: names an ONNX input; a timm model has one input: leave it null")
    elif kind == "onnx" and architecture is not None:
        problems.append(f"{key}.architecture: unused for an ONNX model (the file holds its architecture): "
                        f"leave it null")

    if value["input_size"] > MAX_INPUT_SIZE:
        problems.append(f"{key}.input_size: must be a whole number of pixels, 8..{MAX_INPUT_SIZE}, not "
                        f"{value['input_size']!r}")
    for stat in ("crop", "scale", "mean", "std"):  # the schema's bounds let NaN (and some infinities) through
        numbers = value[stat] if isinstance(value[stat], (list, tuple)) else [value[stat]]
        if not all(math.isfinite(v) for v in numbers):
            problems.append(f"{key}.{stat}: must be finite, not {value[stat]!r}")
    for io in ("input", "output"):
        if isinstance(value[io], str) and not value[io].strip():
            problems.append(f"{key}.{io}: must be a name or null, not {value[io]!r}")
    va = value["valence_arousal"]
    if va is not None and va[0] == va[1]:
        problems.append(f"{key}.valence_arousal: must be null or two different output columns [valence, arousal] "
                        f"(0-based), not {va!r} (whether the output has them is checked when the job starts)")
    return problems


def resolve_spec(name: str, settings: dict) -> FaceModelSpec:
    """The entry with its schema's defaults filled in, checked by ``spec_problems``;
    ``FaceModelError`` listing every problem. The values' types and bounds are the schema's
    to check (the workflow validates the config before any job runs; jsonschema is not
    needed here, so not in the job's environment): this refuses only, by the schema, a key
    it requires that is missing (kind, weights) or one it does not know."""
    schema = builtin_schema("face_model")
    key = f"{SECTION}.{name}"
    problems = [f"{key}.{k}: not set (it has no default)" for k in schema["required"] if k not in settings]
    for unknown in sorted(set(settings) - set(schema["properties"]), key=str):
        close = difflib.get_close_matches(str(unknown), schema["properties"], n=1)
        problems.append(f"{key}.{unknown}: unknown key{f' (did you mean {close[0]}?)' if close else ''}")
    problems = problems or spec_problems(name, settings)
    if problems:
        raise FaceModelError("\n".join(problems))
    value = {**spec_defaults(), **settings}
    for stat in ("mean", "std"):
        value[stat] = tuple(float(v) for v in value[stat])
    if value["valence_arousal"] is not None:
        value["valence_arousal"] = tuple(value["valence_arousal"])
    value["weights"] = str(value["weights"])
    value["crop"], value["scale"] = float(value["crop"]), float(value["scale"])
    return FaceModelSpec(**value)


# --- preprocessing ---------------------------------------------------------------------------

def describe_preprocessing(spec: FaceModelSpec) -> str:
    side = crop_side(spec.crop)
    offset = (FACE_SIZE - side) // 2
    resize = "no resize" if side == spec.input_size else f"resized to {spec.input_size}x{spec.input_size} {RESIZE}"
    return (f"112x112 RGB aligned face; centre {side}x{side} (crop {spec.crop:g}, from pixel {offset}); {resize}; "
            f"{spec.colour.upper()}; x / {spec.scale:g}; (x - {list(spec.mean)}) / {list(spec.std)}; float32")


def preprocess(faces: "torch.Tensor", spec: FaceModelSpec) -> "torch.Tensor":
    """(N, 112, 112, 3) uint8 RGB faces -> (N, 3, S, S) float32 network input, on the
    faces' device (module docstring, Preprocessing)."""
    import torch
    import torch.nn.functional as F

    side = crop_side(spec.crop)
    top = (FACE_SIZE - side) // 2
    x = faces[:, top:top + side, top:top + side].permute(0, 3, 1, 2).float()  # (N, 3, side, side) RGB
    if side != spec.input_size:
        x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", antialias=True,
                          align_corners=False)
    if spec.colour == "bgr":
        x = x.flip(1)
    # (x / scale - mean) / std as one multiply-add, in place on the fresh tensor (a third of the time)
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    gain = (1 / (spec.scale * std)).float().to(x.device).view(1, 3, 1, 1)
    offset = (-mean / std).float().to(x.device).view(1, 3, 1, 1)
    return x.mul_(gain).add_(offset).contiguous()


def extract_face_model(name: str, spec: FaceModelSpec, faces_path: str, out_path: str, *, device: str = "auto",
                       threads: int = 1) -> None:
    """Write ``out_path``: (T, D) rows of the network's chosen output + ``face_found``."""
    import h5py
    import torch

    from vafusion.devices import resolve_device
    from vafusion.faces import FaceJpegs
    from vafusion.features.backbone_runners import build_runner
    from vafusion.features.common import FeatureFile, map_blocks, provenance, set_cpu_threads
    from vafusion.features.dlib_face import carry_forward
    from vafusion.features.iresnet import face_decode_device, read_faces
    from vafusion.jobs import Progress
    from vafusion.weights import sha256sum

    dev = resolve_device(device)
    set_cpu_threads(threads)
    runner = build_runner(name, spec, dev, threads)
    key = f"{SECTION}.{name}"
    decode_on = face_decode_device(runner.input_device)
    with h5py.File(faces_path, "r") as src:
        faces, times, found = FaceJpegs(src), src["timestamps"][:], src["face_found"][:].astype(bool)
        n, n_found = len(times), int(found.sum())
        first = int(np.argmax(found)) if n_found else 0  # without any face: the file's black face
        probe = preprocess(read_faces(faces[first:first + 1], decode_on), spec) if n else None
        if probe is None:  # an empty trial: the width still comes from the network
            probe = preprocess(torch.zeros(1, FACE_SIZE, FACE_SIZE, 3, dtype=torch.uint8, device=decode_on), spec)
        width = runner.trial(probe, f"{name} of {faces_path}").shape[1]
        if spec.valence_arousal is not None and max(spec.valence_arousal) >= width:
            raise FaceModelError(f"{key}.valence_arousal: columns {list(spec.valence_arousal)} asked of output "
                                 f"'{runner.output}', which has {width} (columns 0..{width - 1})")
        runner.warn_if_unlike_timm()
        previous = runner(probe)[0]  # the leading gap's row, at the precision the job runs
        record = {**spec.as_dict(), "output_used": runner.output, "output_width": width,
                  "preprocessing": describe_preprocessing(spec),
                  "no_face": "last face's row (a leading gap: the first face's); none at all: zeros",
                  **runner.describe()}
        weights_info = {"weights": spec.weights, "weights_sha256": sha256sum(spec.weights), "weights_seed": -1}
        attrs = provenance(f"face_model ({spec.kind})", record, weights_info, dev)
        attrs.update({"face_model": name, "kind": spec.kind, "architecture": spec.architecture or "",
                      "output": runner.output, "output_width": width, "preprocessing": record["preprocessing"],
                      "faces_source": src.attrs.get("source", ""), "faces_detector": src.attrs.get("detector", "")})
        version_key = "timm_version" if spec.kind == "timm" else "onnxruntime_version"
        attrs[version_key] = record[version_key]
        if spec.valence_arousal is not None:
            attrs["valence_arousal_columns"] = list(spec.valence_arousal)

        def read(lo: int, hi: int):
            """The block's found faces, decoded (on the network's device when it is a GPU)."""
            jpegs = [data for data, hit in zip(faces[lo:hi], found[lo:hi]) if hit]
            return read_faces(jpegs, decode_on) if jpegs else None

        with FeatureFile(out_path, times, width, attrs) as out:
            out.h5.create_dataset("face_found", data=found)
            if n_found == 0:
                out.write(0, np.zeros((n, width), np.float32))
            else:
                progress = Progress(f"{name} of {faces_path}", n, "faces")
                for start, decoded in map_blocks(n, spec.batch_size, read):
                    hit = found[start:start + spec.batch_size]
                    rows = (runner(preprocess(decoded, spec)) if decoded is not None
                            else np.zeros((0, width), np.float32))
                    block, previous = carry_forward(rows, hit, previous)
                    out.write(start, block)
                    progress.update(start + len(hit))
    if n_found == 0:
        log.warning("%s: no face in any of its %d frames; %s rows all zero, face_found all false", faces_path, n, name)
    log.info("%s (%s%s, output %s, %d wide): %d frames, %d faces computed, %d without a face given the last face's "
             "row -> %s", name, spec.kind, f" {spec.architecture}" if spec.architecture else "", runner.output, width,
             n, n_found, n - n_found, out_path)


def extract(job) -> None:
    """The extractor of every ``features.face_models`` stream (``vafusion.features.registry``):
    ``job.settings`` is the stream's entry, ``job.weights[job.stream]`` its file (or the
    entry's own ``weights``)."""
    from vafusion.weights import WeightsError

    settings = dict(job.settings)
    weights = job.weights.get(job.stream) or settings.get("weights")
    if not weights:
        raise WeightsError(f"{SECTION}.{job.stream}.weights: not set; a face model needs its file (timm: .safetensors "
                           f"or a state dict .pt/.pth; onnx: .onnx). A randomly initialised network would give "
                           f"meaningless features, so this stream does not run without one")
    spec = resolve_spec(job.stream, {**settings, "weights": weights})
    extract_face_model(job.stream, spec, job.faces, job.output, device=job.device, threads=job.threads)
