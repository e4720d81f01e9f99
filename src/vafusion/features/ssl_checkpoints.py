"""Self-supervised speech checkpoints (wav2vec 2.0, HuBERT, WavLM) as torchaudio models,
read without running any of their code (``vafusion.features.ssl`` runs them).

Checkpoints, two formats:

- a **Hugging Face model folder** (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, possibly sharded with an ``*.index.json``; ``Wav2Vec2Model``,
  ``HubertModel``, ``WavLMModel`` or a model with a head, e.g. ``...ForCTC``, whose head is
  ignored). safetensors files are parsed here (a JSON header and raw little-endian
  tensors: no code, no extra dependency); ``.bin`` files go through
  ``torch.load(weights_only=True)``. The weights are converted by torchaudio's own
  importer, ``torchaudio.models.wav2vec2.utils.import_huggingface_model``, handed a light
  stand-in for the transformers model: an object of the right class name exposing
  ``config`` (config.json's values, with transformers' defaults for those left out) and
  ``feature_extractor`` / ``feature_projection`` / ``encoder`` objects whose
  ``state_dict()`` returns the file's tensors. Neither transformers nor fairseq is needed.
- a **fairseq checkpoint** (one ``.pt``: wav2vec 2.0 or HuBERT, pretrained or fine-tuned;
  WavLM's original checkpoints from microsoft/unilm have the same layout), read with
  ``torch.load(weights_only=True)`` allowing only tensors, plain containers, numpy arrays
  and ``argparse.Namespace`` (the ``args`` of pre-2021 checkpoints, a plain attribute bag).
  Its architecture comes from ``cfg["model"]`` (or ``args``, or unilm's flat ``cfg``) and
  its keys are renamed by ``fairseq_to_torchaudio_state``, the rename table of torchaudio's
  ``import_fairseq_model`` (which needs a live fairseq model object) plus WavLM's
  attention parameters; then a strict ``load_state_dict``.

  **omegaconf**: fairseq's hydra-era checkpoints (2021 on: HuBERT's, later wav2vec 2.0
  ones) store ``cfg`` as omegaconf ``DictConfig`` objects (and may store training meters
  in ``extra_state``). Rebuilding them means unpickling arbitrary classes, which
  ``weights_only`` refuses, and so does this module: such a file is refused with an error
  that names it and gives the one-line conversion, to run once where fairseq/omegaconf are
  installed and the file is trusted (``FAIRSEQ_CONVERSION``): it re-saves ``model`` and
  ``cfg`` as plain containers. The Hugging Face version of the same model (a folder) loads
  directly. A configuration that leaves architecture options out gets fairseq's defaults,
  with a warning (the tensor shapes are checked; the head count and LayerNorm order
  cannot be).

"""

from __future__ import annotations

import argparse
import ast
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
HF_BASE_PREFIXES = ("wav2vec2.", "hubert.", "wavlm.")  # a model with a head keeps its base model under these
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
    """(config, base-model state dict, weight files, do_normalize or None) of a folder."""
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
    for prefix in HF_BASE_PREFIXES:  # ...ForCTC, ...ForPreTraining: keep the base model only
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
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


def huggingface_to_torchaudio(config: dict, state: dict[str, Tensor], kind: str, where: str) -> torch.nn.Module:
    """torchaudio's model from a transformers config and base-model state dict, through
    ``import_huggingface_model`` and a stand-in for the transformers model."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    cfg = {**HF_DEFAULTS, **config}
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
    parts = {name: {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
             for name in ("feature_extractor", "feature_projection", "encoder")}
    if not parts["encoder"]:
        raise WeightsError(f"{where}: no encoder.* tensors among the weights (keys start with "
                           f"{sorted({k.split('.')[0] for k in state})[:8]}): not a {kind} model")
    stand_in = type("WavLMModel" if kind == "wavlm" else "Wav2Vec2Model", (), {})()
    stand_in.config = SimpleNamespace(**cfg)
    stand_in.feature_extractor = _StateOnly(parts["feature_extractor"])
    stand_in.feature_projection = _StateOnly(parts["feature_projection"])
    # older checkpoints' weight_g / weight_v: torch's weight-norm load hook renames them
    stand_in.encoder = _StateOnly(parts["encoder"])
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
    source = f"{folder} (huggingface {config.get('model_type')}: {', '.join(f.name for f in files)})"
    return SslCheckpoint(model, kind, source, digest, normalize)


def sha256sum_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- fairseq checkpoints ------------------------------------------------------------------

FAIRSEQ_DEFAULTS = {  # fairseq's Wav2Vec2Config / HubertConfig and unilm's WavLMConfig defaults
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
    "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1, "num_buckets": 320, "max_distance": 1280,
    "relative_position_embedding": True, "gru_rel_pos": True}
# keys of training-only parts (quantiser, masking embedding, prediction heads, a CTC head)
FAIRSEQ_IGNORED = re.compile(r"^(mask_emb|label_embs_concat|quantizer\.|project_q\.|final_proj\.|proj\.|target_glu\.)")
# fairseq name -> torchaudio name (as torchaudio's import_fairseq._map_key), in order
FAIRSEQ_RENAMES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.transformer.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv]|out)_proj\.(weight|bias)",
     r"encoder.transformer.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.transformer.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)",
     r"encoder.transformer.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.transformer.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.transformer.layers.\1.final_layer_norm.\2"),
    # WavLM's gated relative position bias (unilm names)
    (r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight",
     r"encoder.transformer.layers.\1.attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)",
     r"encoder.transformer.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a", r"encoder.transformer.layers.\1.attention.gru_rel_pos_const"),
]


def parse_conv_layers(spec) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers``, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``,
    evaluated without ``eval``: integer tuples in lists, ``+`` of lists, ``*`` by an integer."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult):
                seq, times = (left, right) if isinstance(left, list) else (right, left)
                if isinstance(seq, list) and isinstance(times, int) and 0 <= times <= 1000:
                    return seq * times
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(spec, mode="eval").body) if isinstance(spec, str) else [tuple(x) for x in spec]
        layers = [tuple(int(n) for n in layer) for layer in layers]
    except (SyntaxError, ValueError, TypeError) as err:
        raise WeightsError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) ({err})") from None
    if not layers or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
        raise WeightsError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return layers


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    raise TypeError(type(obj).__name__)


def fairseq_configs(checkpoint: dict, where: str) -> tuple[dict, dict]:
    """(model config, task config) of a fairseq / unilm checkpoint; for a fine-tuned model
    (``w2v_args``) those of the pretrained model inside it."""
    try:
        cfg, args = _as_dict(checkpoint.get("cfg")), _as_dict(checkpoint.get("args"))
        if cfg and isinstance(cfg.get("model"), (dict, argparse.Namespace)):  # fairseq (hydra)
            model_cfg, task_cfg = _as_dict(cfg["model"]), _as_dict(cfg.get("task"))
        elif cfg:  # unilm's WavLM: the model's config, flat
            model_cfg, task_cfg = cfg, cfg
        elif args:  # fairseq before hydra: every option in one namespace
            model_cfg, task_cfg = args, args
        else:
            raise WeightsError(f"{where} has neither 'cfg' nor 'args': its architecture is unknown")
        inner = _as_dict(model_cfg.get("w2v_args"))
        if not inner and model_cfg.get("w2v_path"):
            raise WeightsError(f"{where} is a fine-tuned model whose configuration does not include the pretrained "
                               f"model's (w2v_args is empty; fairseq read it from {model_cfg['w2v_path']}): its "
                               f"architecture is unknown. Use the pretrained checkpoint, or its Hugging Face version")
        if inner:  # fine-tuned: the pretrained model's options
            inner_model = _as_dict(inner.get("model")) or inner
            task_cfg = {**_as_dict(inner.get("task")), **task_cfg} if "task" in inner else {**inner, **task_cfg}
            model_cfg = {**inner_model, "_name": inner_model.get("_name") or inner_model.get("arch")}
    except TypeError as err:
        raise WeightsError(f"{where}: its configuration holds a {err} where plain options were expected") from None
    return model_cfg, task_cfg


def fairseq_kind(model_cfg: dict, state: dict) -> str | None:
    """Which model family a fairseq checkpoint holds (None: it does not say)."""
    if any(".relative_attention_bias." in k or ".grep_linear." in k for k in state):
        return "wavlm"
    name = str(model_cfg.get("_name") or model_cfg.get("arch") or "")
    if name.startswith("hubert") or "label_embs_concat" in state:
        return "hubert"
    if name.startswith("wav2vec") or any(k.startswith("quantizer.") for k in state):
        return "wav2vec2"
    return None


def fairseq_to_torchaudio_state(state: dict[str, Tensor], wavlm: bool) -> tuple[dict[str, Tensor], list[str]]:
    """(torchaudio state dict, keys not understood) from a fairseq/unilm model state dict."""
    out, unknown = {}, []
    qkv: dict[str, dict[str, Tensor]] = {}  # WavLM: q/k/v go into nn.MultiheadAttention's in_proj
    for key, value in state.items():
        key_ = re.sub(r"^(w2v_encoder\.)?(w2v_model\.)?", "", key)
        if FAIRSEQ_IGNORED.match(key_):
            continue
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv]|out)_proj\.(weight|bias)", key_)
        if wavlm and match:
            layer, which, param = match.groups()
            prefix = f"encoder.transformer.layers.{layer}.attention.attention."
            if which == "out":
                out[f"{prefix}out_proj.{param}"] = value
            else:
                qkv.setdefault(f"{prefix}in_proj_{param}", {})[which] = value
            continue
        for pattern, template in FAIRSEQ_RENAMES:
            if re.fullmatch(pattern, key_):
                out[re.sub(pattern, template, key_)] = value
                break
        else:
            unknown.append(key)
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            unknown.append(f"{name} (only {sorted(parts)} of q, k, v)")
        else:
            out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out, unknown


def fairseq_to_torchaudio(checkpoint: dict, kind: str, where: str) -> tuple[torch.nn.Module, bool | None]:
    """(torchaudio model, the task's input normalisation or None) of a fairseq checkpoint."""
    import torchaudio.models as models

    state = checkpoint.get("model")
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{where} has no 'model' state dict")
    model_cfg, task_cfg = fairseq_configs(checkpoint, where)
    found = fairseq_kind(model_cfg, state)
    if found is not None and found != kind:
        raise WeightsError(f"{where} holds a {found} model, not {kind}: set it as weights.{found}")
    cfg = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}
    said = [k for k in FAIRSEQ_DEFAULTS if k != "pos_conv_depth"]  # pos_conv_depth: newer fairseq, 1 when unsaid
    if kind != "wavlm":
        said = [k for k in said if k not in ("num_buckets", "max_distance", "relative_position_embedding",
                                             "gru_rel_pos")]
    defaulted = [k for k in said if model_cfg.get(k) is None]
    if defaulted:  # shapes are checked below, but not e.g. the heads or the LayerNorm order
        log.warning("%s does not say %s: fairseq's defaults are assumed (%s)", where, ", ".join(defaulted),
                    ", ".join(f"{k}={FAIRSEQ_DEFAULTS[k]!r}" for k in defaulted))
    if cfg["activation_fn"] != "gelu" or int(cfg["pos_conv_depth"]) != 1 or cfg["extractor_mode"] not in (
            "default", "layer_norm"):
        raise WeightsError(f"{where}: torchaudio's {kind} model cannot reproduce this configuration (activation_fn="
                           f"{cfg['activation_fn']!r}, pos_conv_depth={cfg['pos_conv_depth']!r}, extractor_mode="
                           f"{cfg['extractor_mode']!r})")
    conv_layers = parse_conv_layers(cfg["conv_feature_layers"])
    arch = dict(
        extractor_mode="group_norm" if cfg["extractor_mode"] == "default" else "layer_norm",
        extractor_conv_layer_config=conv_layers, extractor_conv_bias=bool(cfg["conv_bias"]),
        encoder_embed_dim=int(cfg["encoder_embed_dim"]), encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=int(cfg["conv_pos"]), encoder_pos_conv_groups=int(cfg["conv_pos_groups"]),
        encoder_num_layers=int(cfg["encoder_layers"]), encoder_num_heads=int(cfg["encoder_attention_heads"]),
        encoder_attention_dropout=0.0, encoder_ff_interm_features=int(cfg["encoder_ffn_embed_dim"]),
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=bool(cfg["layer_norm_first"]),
        encoder_layer_drop=0.0, aux_num_out=None)
    if kind == "wavlm":
        if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
            raise WeightsError(f"{where}: torchaudio's WavLM has gated relative position embeddings; this model has "
                               f"relative_position_embedding={cfg['relative_position_embedding']}, "
                               f"gru_rel_pos={cfg['gru_rel_pos']}")
        model = models.wavlm_model(**arch, encoder_num_buckets=int(cfg["num_buckets"]),
                                   encoder_max_distance=int(cfg["max_distance"]))
    else:
        model = models.wav2vec2_model(**arch)
    converted, unknown = fairseq_to_torchaudio_state(state, wavlm=kind == "wavlm")
    if unknown:
        raise WeightsError(f"{where}: {len(unknown)} tensors of no known {kind} part: {', '.join(unknown[:10])}")
    projection = model.encoder.feature_projection.projection
    if "encoder.feature_projection.projection.weight" not in converted and projection.in_features == \
            projection.out_features:  # fairseq leaves out post_extract_proj when the widths agree: identity
        converted["encoder.feature_projection.projection.weight"] = torch.eye(projection.in_features)
        converted["encoder.feature_projection.projection.bias"] = torch.zeros(projection.in_features)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    wrong = sorted(f"{k}: file {tuple(converted[k].shape)}, model {tuple(expected[k].shape)}"
                   for k in set(expected) & set(converted) if converted[k].shape != expected[k].shape)
    if missing or wrong:
        raise WeightsError(f"{where} does not fit the {kind} architecture of its configuration:"
                           + (f"\n  missing ({len(missing)}): {', '.join(missing[:10])}" if missing else "")
                           + (f"\n  wrong shapes ({len(wrong)}): {', '.join(wrong[:10])}" if wrong else ""))
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    normalize = task_cfg.get("normalize", model_cfg.get("normalize"))
    return model, None if normalize is None else bool(normalize)


def _load_fairseq(path: Path, kind: str) -> SslCheckpoint:
    where = f"{kind} checkpoint '{path}'"
    checkpoint = _torch_load_plain(path, kind, allow_namespace=True)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{where} holds a {type(checkpoint).__name__}, not a fairseq checkpoint (a dict with "
                           f"'model' and 'cfg' or 'args'); a Hugging Face model is a folder with config.json")
    model, normalize = fairseq_to_torchaudio(checkpoint, kind, where)
    return SslCheckpoint(model, kind, f"{path} (fairseq)", sha256sum(path), normalize)
