"""Self-supervised speech checkpoints (wav2vec 2.0, HuBERT, WavLM) as torchaudio models,
read without running any of their code (``vafusion.features.ssl`` runs them): the
entry point (``load_checkpoint``, which reads a folder here and sends a file to
``vafusion.features.ssl_fairseq``), what both formats share (``SslCheckpoint``, the
``torch.load(weights_only=True)`` reader ``_torch_load_plain`` with its refusals) and the
Hugging Face reader.

Checkpoints, two formats:

- a **Hugging Face model folder** (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, possibly sharded with an ``*.index.json``; ``Wav2Vec2Model``,
  ``HubertModel``, ``WavLMModel`` or a model with a task head, e.g. ``...ForCTC`` or an
  emotion model's ``...ForSequenceClassification``, whose head's tensors are ignored by name and
  logged; every tensor of the encoder must be there, of its shape, and be used). A wrapper whose
  config.json names its encoder (``ssl_type``, the Odyssey 2024 SER baseline's) gets that
  encoder's architecture (``NAMED_ENCODERS``). safetensors files are parsed here (a JSON
  header and raw little-endian tensors: no code, no extra dependency); ``.bin`` files go through
  ``torch.load(weights_only=True)``. The weights are converted by torchaudio's own
  importer, ``torchaudio.models.wav2vec2.utils.import_huggingface_model``, handed a light
  stand-in for the transformers model: an object of the right class name exposing
  ``config`` (config.json's values, with transformers' defaults for those left out) and
  ``feature_extractor`` / ``feature_projection`` / ``encoder`` objects whose
  ``state_dict()`` returns the file's tensors. Neither transformers nor fairseq is needed.
- a **fairseq checkpoint** (one ``.pt``): read by ``vafusion.features.ssl_fairseq`` (see
  there), through ``_torch_load_plain`` here. That reader's refusal of omegaconf objects
  (fairseq's hydra-era ``cfg``) names the file and gives the one-line conversion,
  ``FAIRSEQ_CONVERSION``; as ``.bin`` files go through the same reader, both live here.

"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from vafusion.weights import NUMPY_SAFE_GLOBALS, WeightsError, refused_as_unsafe, sha256sum, unsafe_global

log = logging.getLogger(__name__)

KINDS = ("wav2vec2", "hubert", "wavlm")  # stream name = model family

FAIRSEQ_CONVERSION = (  # keeps the weights, the configuration (plain) and old checkpoints' args (a Namespace)
    "python -c \"import sys, torch; from omegaconf import OmegaConf; "
    "c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); cfg = c.get('cfg'); "
    "torch.save({'model': c['model'], 'args': c.get('args'), 'cfg': None if cfg is None else "
    "OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}, sys.argv[2])\" IN.pt OUT.pt")


# --- checkpoints ------------------------------------------------------------------------

@dataclass
class SslCheckpoint:
    """A torchaudio ``Wav2Vec2Model`` with where it came from."""

    model: torch.nn.Module  # torchaudio.models.Wav2Vec2Model, eval mode, on the CPU
    kind: str  # wav2vec2, hubert or wavlm
    source: str  # what provenance says: path (format: file)
    sha256: str
    normalize: bool | None  # input normalisation the checkpoint declares; None: it does not say

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.transformer.layers)

    @property
    def dim(self) -> int:
        return self.model.encoder.feature_projection.projection.out_features

    @property
    def layer_norm_front_end(self) -> bool:
        """Every conv block has a LayerNorm ("large" models) rather than one GroupNorm."""
        return all(block.layer_norm is not None for block in self.model.feature_extractor.conv_layers)

    def weights_info(self) -> dict:
        return {"weights": self.source, "weights_sha256": self.sha256, "weights_seed": -1}


def conv_geometry(model: torch.nn.Module) -> tuple[int, int]:
    """(hop, receptive field) in samples of the model's convolutional front end (320, 400)."""
    hop, field = 1, 1
    for block in model.feature_extractor.conv_layers:
        field += (block.kernel_size - 1) * hop
        hop *= block.stride
    return hop, field


def load_checkpoint(path: str | Path, kind: str) -> SslCheckpoint:
    """Build the torchaudio model of a ``kind`` checkpoint (a Hugging Face folder or a
    fairseq ``.pt``), strictly, without running code from it (raises WeightsError)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind '{kind}'; known: {', '.join(KINDS)}")
    path = Path(path)
    if path.is_dir():
        checkpoint = _load_huggingface(path, kind)
    elif path.is_file():
        from vafusion.features.ssl_fairseq import _load_fairseq  # lazy: that module imports this one

        checkpoint = _load_fairseq(path, kind)
    else:
        raise WeightsError(f"{kind} checkpoint '{path}' does not exist (a Hugging Face model folder or a fairseq .pt)")
    checkpoint.model.eval()
    log.info("%s: loaded %s (%d layers, %d-d, sha256 %s)", kind, checkpoint.source, checkpoint.num_layers,
             checkpoint.dim, checkpoint.sha256)
    return checkpoint


def random_architecture(kind: str, size: str = "base") -> torch.nn.Module:
    """torchaudio's ``size`` ("base": 7 conv + 12 x 768 layers; "large": 24 x 1024) ``kind``
    architecture, randomly initialised: for measuring speed and memory only
    (``benchmarks/bench_ssl.py``), never for features."""
    import torchaudio.models as models

    build = {("wav2vec2", "base"): models.wav2vec2_base, ("hubert", "base"): models.hubert_base,
             ("wavlm", "base"): models.wavlm_base, ("wav2vec2", "large"): models.wav2vec2_large_lv60k,
             ("hubert", "large"): models.hubert_large, ("wavlm", "large"): models.wavlm_large}[(kind, size)]
    return build().eval()


def _torch_load_plain(path: Path, what: str, allow_namespace: bool = False):
    """``torch.load(weights_only=True)`` with numpy arrays (and ``argparse.Namespace``)
    allowed, memory-mapped where the file allows; every refusal becomes a WeightsError
    naming the file."""
    allowed = [*NUMPY_SAFE_GLOBALS, *([argparse.Namespace] if allow_namespace else [])]

    def unreadable(err: Exception) -> WeightsError:
        return WeightsError(f"{what} checkpoint '{path}' cannot be read (corrupt or not a PyTorch file): {err}")

    def load(mmap: bool):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:  # mapped: an optimiser state saved alongside (fairseq) is never read into memory
            return load(mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            return load(mmap=False)  # a legacy (pre-zip) file cannot be mapped
    except pickle.UnpicklingError as err:
        if "omegaconf" in str(err):
            raise WeightsError(
                f"{what} checkpoint '{path}' stores its configuration as omegaconf objects (fairseq's cfg), which "
                f"cannot be read without unpickling arbitrary classes; it is refused. Convert it once, where fairseq "
                f"and omegaconf are installed and you trust the file, to plain containers:\n  {FAIRSEQ_CONVERSION}\n"
                f"and set weights.{what} to OUT.pt; or use the model's Hugging Face version (a folder with "
                f"config.json). ({unsafe_global(err)})") from None
        if refused_as_unsafe(err):
            raise WeightsError(
                f"{what} checkpoint '{path}' holds Python objects other than tensors, plain containers and numpy "
                f"arrays; it is refused because unpickling them could run code. Re-save the weights and the "
                f"configuration as plain containers from a source you trust (for a fairseq checkpoint: "
                f"{FAIRSEQ_CONVERSION}). ({unsafe_global(err)})") from None
        raise unreadable(err) from None
    except Exception as err:  # noqa: BLE001 - any other failure means an unusable file
        raise unreadable(err) from None


# --- Hugging Face folders -----------------------------------------------------------------

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
HF_MODEL_TYPES = {"wav2vec2": "wav2vec2", "hubert": "hubert", "wavlm": "wavlm"}
# a model with a task head keeps its encoder under one of these (ssl_model.: the Odyssey 2024 SER baseline's SERModel)
HF_BASE_PREFIXES = ("wav2vec2.", "hubert.", "wavlm.", "ssl_model.")
HF_ENCODER_PARTS = ("feature_extractor.", "feature_projection.", "encoder.")
HF_TRAINING_ONLY = ("masked_spec_embed",)  # SpecAugment's mask vector: in the encoder, unused at inference
# top-level modules of the task heads beside the encoder: transformers' ...ForCTC (lm_head),
# ...ForSequenceClassification / ...ForAudioFrameClassification (projector, classifier, layer_weights),
# ...ForXVector (also tdnn, feature_extractor, objective), ...ForPreTraining (quantizer, project_q, project_hid);
# audeering's EmotionModel (classifier.dense / .out_proj); the Odyssey 2024 baseline's SERModel (pool_model, ser_model)
HF_HEAD_MODULES = frozenset({"lm_head", "projector", "classifier", "layer_weights", "tdnn", "feature_extractor",
                             "objective", "quantizer", "project_q", "project_hid", "pool_model", "ser_model"})
# encoders that a wrapper's config.json names (ssl_type; the Odyssey 2024 baseline's SERConfig, model_type "ser")
# rather than describes, as their own config.json on the hub does; the wrapper's encoder fields take precedence
NAMED_ENCODERS = {
    "microsoft/wavlm-large": {
        "model_type": "wavlm", "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": False,
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "facebook/wav2vec2-large-robust": {
        "model_type": "wav2vec2", "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True,
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}}
# transformers' defaults (Wav2Vec2Config / HubertConfig / WavLMConfig) for values config.json may leave out
HF_DEFAULTS = {
    "feat_extract_norm": "group", "feat_extract_activation": "gelu", "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "layerdrop": 0.1, "layer_norm_eps": 1e-5, "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": False, "num_buckets": 320,
    "max_bucket_distance": 800, "feat_proj_layer_norm": True, "conv_pos_batch_norm": False, "add_adapter": False}


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """A ``.safetensors`` file's tensors: an 8-byte little-endian header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the raw data."""
    def corrupt(why: str) -> WeightsError:
        return WeightsError(f"'{path}' is not a readable safetensors file: {why}")

    with open(path, "rb") as fh:
        size = fh.read(8)
        if len(size) < 8:
            raise corrupt("too short")
        header_len = int.from_bytes(size, "little")
        if header_len > 100 << 20:
            raise corrupt(f"a header of {header_len} bytes")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as err:
            raise corrupt(f"bad header ({err})") from None
        data = bytearray(fh.read())
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[spec["dtype"]]
            shape = [int(n) for n in spec["shape"]]
            begin, end = (int(n) for n in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor '{name}' has an unknown dtype or a bad entry: {spec}") from None
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise corrupt(f"tensor '{name}' {shape} {spec['dtype']} does not fit its byte range {begin}..{end}")
        tensors[name] = (torch.frombuffer(data, dtype=dtype, count=count, offset=begin) if count
                         else torch.empty(0, dtype=dtype)).reshape(shape)
    return tensors


def _hf_weight_files(folder: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text()).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))]
    raise WeightsError(f"Hugging Face model folder '{folder}' has neither model.safetensors nor pytorch_model.bin "
                       f"(nor their sharded *.index.json)")


def read_huggingface_folder(folder: Path, kind: str) -> tuple[dict, dict[str, Tensor], list[Path], bool | None]:
    """(config, the weight files' tensors, weight files, do_normalize or None) of a folder."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{kind} checkpoint folder '{folder}' has no config.json (a Hugging Face model folder "
                           f"is expected; a fairseq checkpoint is a single .pt file)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise WeightsError(f"'{config_path}' is not valid JSON: {err}") from None
    files = _hf_weight_files(folder)
    state: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(read_safetensors(file))
        else:
            loaded = _torch_load_plain(file, kind)
            if not isinstance(loaded, dict):
                raise WeightsError(f"'{file}' holds a {type(loaded).__name__}, not a state dict")
            state.update(loaded)
    normalize = None
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = json.loads(preprocessor.read_text()).get("do_normalize")
    return config, state, files, None if normalize is None else bool(normalize)


class _StateOnly:
    """What torchaudio's importer reads from a transformers submodule: ``state_dict()``."""

    def __init__(self, state: dict[str, Tensor]):
        self._state = state

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self._state)  # a copy: the importer pops WavLM's q/k/v from it


def encoder_config(config: dict, where: str) -> dict:
    """config.json's encoder architecture, transformers' defaults filling what it leaves out; a
    wrapper naming its encoder (``ssl_type``) rather than describing it gets that encoder's."""
    named = config.get("ssl_type")
    if config.get("model_type") in HF_MODEL_TYPES.values() or named is None:
        return {**HF_DEFAULTS, **config}
    if named not in NAMED_ENCODERS:
        raise WeightsError(f"{where}: config.json (model_type '{config.get('model_type')}') names its encoder, "
                           f"'{named}' (ssl_type), without describing it, and vafusion knows the architectures of "
                           f"{', '.join(NAMED_ENCODERS)} only; give a folder whose config.json is the encoder's")
    log.info("%s: a '%s' model around %s (ssl_type): that encoder's architecture", where, config.get("model_type"),
             named)
    return {**HF_DEFAULTS, **NAMED_ENCODERS[named], **{k: v for k, v in config.items() if k in HF_DEFAULTS}}


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def encoder_tensors(state: dict[str, Tensor], where: str) -> tuple[dict[str, Tensor], str]:
    """(the encoder's tensors, named as in a bare model; the prefix they had) of a folder's
    tensors. A task head's (beside the encoder) and training-only ones are left out by name
    and said so; a tensor of the encoder that no part of it takes is refused."""
    prefix = next((p for p in HF_BASE_PREFIXES if any(k.startswith(p) for k in state)), "")
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    stray = sorted(prefix + k for k in inside if not k.startswith(HF_ENCODER_PARTS) and k not in HF_TRAINING_ONLY)
    if stray:
        raise WeightsError(f"{where}: {len(stray)} tensors of no part of the encoder: {_listed(stray)}")
    outside = sorted(k for k in state if not k.startswith(prefix))
    head = [k for k in outside if k.split(".")[0] in HF_HEAD_MODULES]
    ignored = head + sorted(prefix + k for k in inside if k in HF_TRAINING_ONLY)
    if ignored:
        log.info("%s: ignored %d tensors, a task head's or used in training only: %s", where, len(ignored),
                 _listed(ignored))
    unknown = [k for k in outside if k not in head]
    if unknown:  # beside the encoder, so not the encoder's; but of no head this module knows
        log.warning("%s: ignored %d tensors beside the encoder (%s*) of no known task head: %s", where, len(unknown),
                    prefix, _listed(unknown))
    return {k: v for k, v in inside.items() if k.startswith(HF_ENCODER_PARTS)}, prefix


def encoder_tensor_shapes(cfg: dict, wavlm: bool) -> dict[str, tuple[int, ...]]:
    """transformers' names and shapes of the tensors of the encoder ``cfg`` describes: those of
    torchaudio's model (built on the meta device: no memory), the importer's renames undone."""
    import torchaudio.models as models
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config, _get_config_wavlm

    arch = (_get_config_wavlm if wavlm else _get_config)(SimpleNamespace(**cfg))
    with torch.device("meta"):
        model = (models.wavlm_model if wavlm else models.wav2vec2_model)(**arch, aux_num_out=None)
    shapes = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^encoder\.(transformer|feature_projection)\.",
                     lambda m: "encoder." if m[1] == "transformer" else "feature_projection.", key)
        qkv = re.fullmatch(r"(encoder\.layers\.\d+\.attention\.)attention\.in_proj_(weight|bias)", key)
        if qkv:  # WavLM: torchaudio's nn.MultiheadAttention holds transformers' q, k and v projections
            shapes.update({f"{qkv[1]}{q}_proj.{qkv[2]}": (value.shape[0] // 3, *value.shape[1:]) for q in "qkv"})
        else:
            shapes[key.replace(".attention.attention.out_proj.", ".attention.out_proj.")] = tuple(value.shape)
    return shapes


def huggingface_to_torchaudio(config: dict, state: dict[str, Tensor], kind: str, where: str) -> torch.nn.Module:
    """torchaudio's model from a transformers config and a folder's tensors (the encoder's are
    taken, every one of them checked present and of its shape), through
    ``import_huggingface_model`` and a stand-in for the transformers model."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    cfg = encoder_config(config, where)
    model_type = cfg.get("model_type")
    if model_type != HF_MODEL_TYPES[kind]:
        raise WeightsError(f"{where} is a '{model_type}' model (config.json model_type), not {kind}: set it as "
                           f"weights.{model_type} if that stream exists, or give a {kind} checkpoint")
    unsupported = {
        "feat_extract_norm": cfg["feat_extract_norm"] in ("group", "layer"),
        "feat_extract_activation": cfg["feat_extract_activation"] == "gelu",
        "hidden_act": cfg["hidden_act"] == "gelu",
        "layer_norm_eps": math.isclose(float(cfg["layer_norm_eps"]), 1e-5),
        "feat_proj_layer_norm": kind != "hubert" or bool(cfg["feat_proj_layer_norm"]),
        "conv_pos_batch_norm": not cfg["conv_pos_batch_norm"],
        "add_adapter": not cfg["add_adapter"],
    }
    bad = [f"{k}={cfg[k]!r}" for k, ok in unsupported.items() if not ok]
    if bad:
        raise WeightsError(f"{where}: torchaudio's {kind} model cannot reproduce this configuration ({', '.join(bad)})")
    encoder, prefix = encoder_tensors(state, where)
    if not any(k.startswith("encoder.") for k in encoder):
        raise WeightsError(f"{where}: no encoder.* tensors among the weights (keys start with "
                           f"{sorted({k.split('.')[0] for k in state})[:8]}): not a {kind} model")
    expected = encoder_tensor_shapes(cfg, kind == "wavlm")
    # older checkpoints' weight_g / weight_v: torch's weight-norm load hook renames them
    given = {re.sub(r"\.weight_([gv])$", lambda m: f".parametrizations.weight.original{'gv'.index(m[1])}", k):
             tuple(v.shape) for k, v in encoder.items()}
    missing = sorted(prefix + k for k in set(expected) - set(given))
    unexpected = sorted(prefix + k for k in set(given) - set(expected))
    wrong = sorted(f"{prefix}{k}: file {given[k]}, config.json {expected[k]}"
                   for k in set(expected) & set(given) if given[k] != expected[k])
    if missing or unexpected or wrong:
        raise WeightsError(f"{where} does not fit the {kind} architecture of its config.json:"
                           + (f"\n  missing ({len(missing)}): {_listed(missing, 10)}" if missing else "")
                           + (f"\n  unexpected ({len(unexpected)}): {_listed(unexpected, 10)}" if unexpected else "")
                           + (f"\n  wrong shapes ({len(wrong)}): {_listed(wrong, 10)}" if wrong else ""))
    stand_in = type("WavLMModel" if kind == "wavlm" else "Wav2Vec2Model", (), {})()
    stand_in.config = SimpleNamespace(**cfg)
    for part in ("feature_extractor", "feature_projection", "encoder"):
        setattr(stand_in, part, _StateOnly({k[len(part) + 1:]: v for k, v in encoder.items()
                                            if k.startswith(part + ".")}))
    importer_log = logging.getLogger("torchaudio.models.wav2vec2.utils.import_huggingface")
    level = importer_log.level
    importer_log.setLevel(logging.ERROR)  # it warns that a model without a CTC head has no lm_head
    try:
        return import_huggingface_model(stand_in)
    except (RuntimeError, KeyError, ValueError) as err:
        raise WeightsError(f"{where} does not fit the {kind} architecture of its config.json: {err}") from None
    finally:
        importer_log.setLevel(level)


def _load_huggingface(folder: Path, kind: str) -> SslCheckpoint:
    config, state, files, normalize = read_huggingface_folder(folder, kind)
    model = huggingface_to_torchaudio(config, state, kind, f"{kind} checkpoint '{folder}'")
    if len(files) == 1:
        digest = sha256sum(files[0])
    else:  # sharded: the digest of the shards' digests
        digest = sha256sum_text("".join(f"{f.name} {sha256sum(f)}\n" for f in files))
    around = f" around {config['ssl_type']}" if config.get("ssl_type") else ""
    source = f"{folder} (huggingface {config.get('model_type')}{around}: {', '.join(f.name for f in files)})"
    return SslCheckpoint(model, kind, source, digest, normalize)


def sha256sum_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
