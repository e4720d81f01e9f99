"""wav2vec 2.0, HuBERT and WavLM features: one row per video frame from a self-supervised
speech model's hidden states (the ``wav2vec2``, ``hubert`` and ``wavlm`` streams).

Why: the hidden states of speech models pretrained without labels carry paralinguistic
information (prosody, voice quality, affect) beyond hand-crafted features and VGGish; many
recent ABAW valence/arousal systems use them as their audio stream.

The network is torchaudio's (``torchaudio.models.wav2vec2_model`` / ``wavlm_model``); the
user supplies a checkpoint (``weights.<stream>``), read without running any of its code.
A missing checkpoint is an error: a randomly initialised self-supervised model gives
meaningless features, so these streams never fall back to a random network.

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

Which hidden state (``layer``): ``k`` (1..N) is the output of transformer layer ``k``, as
transformers' (5.x) ``hidden_states[k]`` (tested) and torchaudio's ``extract_features``: for
pre-LayerNorm ("large") models the encoder's final LayerNorm is not applied. ``"last"`` is layer N;
``"average"`` is the mean of layers 1..N. Only the layers up to the one asked for run.

Input normalisation (``normalize``): zero mean, unit variance over each forward pass's
input, as transformers' feature extractor does with ``do_normalize``. ``auto`` takes what
the checkpoint says (``preprocessor_config.json``'s ``do_normalize``; fairseq's
``task.normalize``) and otherwise fairseq's convention: on for models with a LayerNorm
convolutional front end ("large"), off for the GroupNorm ones ("base").

Long recordings are cut into chunks of ``chunk_s`` seconds, each run with ``context_s``
seconds of audio on each side (clipped at the ends of the audio) of which the outputs are
dropped, so that the transformer sees context at every chunk edge and memory does not grow
with the recording; ``batch_size`` chunks of equal length go through the network at once.
Chunk edges lie on the 20 ms frame grid, so every chunk's frames are frames of the whole
recording's grid. What a chunk changes: the attention reaches only the chunk and its
context, and two statistics are taken over the forward pass's input rather than the whole
recording: the input normalisation's mean and variance, and the GroupNorm of "base"
models' first conv layer (per channel, over time). Chunks whose context covers the whole
recording give exactly the unchunked output (tested); a shorter context gives a close one. The WAV's last
samples that make no whole 20 ms frame are left out, as the models do. On CUDA the network
runs under bfloat16 autocast (``precision: auto``); ``bfloat16`` asks for it on the CPU
too.

Frame clock: the models emit frames every H = 320 samples (20 ms; the product of the conv
strides) with a receptive field of R = 400 samples (25 ms). Frame ``j`` (j = 0 starts at
the WAV's first sample; negative or past-the-end frames hear zeros) is centred at
``(j H + R / 2) / sr`` seconds and stands for the 20 ms cell ``[centre - H/2, centre + H/2)``,
so the cells tile time. Each video frame stands for the span from half-way to the previous
frame to half-way to the next (each half capped at half a nominal frame period
``1 / video_fps``; the first and last frames mirror their one neighbour); its row is the
mean of the cells that span overlaps, weighted by the overlap (the time average of the
piecewise-constant 50 Hz signal over the span). At 25-30 fps a frame averages 2-3 cells;
above 50 fps it takes one cell, or interpolates between two. The audio analysed is the WAV
(``audio_start_s`` places its first sample on the frame clock) extended with silence where
the video runs past it.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from vafusion.devices import resolve_device
from vafusion.features.common import FeatureFile, prefetch, provenance, read_audio_segment, set_cpu_threads
from vafusion.jobs import Progress
from vafusion.weights import NUMPY_SAFE_GLOBALS, WeightsError, refused_as_unsafe, sha256sum, unsafe_global

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
KINDS = ("wav2vec2", "hubert", "wavlm")  # stream name = model family
NORMALIZE_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor

FAIRSEQ_CONVERSION = (  # keeps the weights, the configuration (plain) and old checkpoints' args (a Namespace)
    "python -c \"import sys, torch; from omegaconf import OmegaConf; "
    "c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); cfg = c.get('cfg'); "
    "torch.save({'model': c['model'], 'args': c.get('args'), 'cfg': None if cfg is None else "
    "OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}, sys.argv[2])\" IN.pt OUT.pt")


# --- settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SslParams:
    """A stream's settings (``features.<stream>`` of the config, plus the sample rate)."""

    layer: int | str = "average"  # 1..N, "last" or "average" (of layers 1..N)
    chunk_s: float = 20.0  # audio per forward pass, context excluded
    context_s: float = 2.0  # audio on each side of a chunk the network sees, outputs dropped
    batch_size: int = 4  # chunks per forward pass
    normalize: bool | str = "auto"  # zero-mean unit-variance input: true, false or auto (the checkpoint's)
    precision: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 on CPU), float32, bfloat16
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if not (self.layer in ("last", "average") or (isinstance(self.layer, int) and not isinstance(self.layer, bool)
                                                      and self.layer >= 1)):
            raise ValueError(f"layer must be an integer >= 1, 'last' or 'average', not {self.layer!r}")
        if not self.chunk_s > 0 or not self.context_s >= 0 or self.batch_size < 1:
            raise ValueError("chunk_s must be > 0, context_s >= 0 and batch_size >= 1")
        if self.normalize not in (True, False, "auto"):
            raise ValueError(f"normalize must be true, false or auto, not {self.normalize!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, not {self.precision!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the speech models take {SAMPLE_RATE} Hz audio; media.sample_rate is {self.sample_rate}")

    def as_dict(self) -> dict:
        return asdict(self)


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


# --- the network on chunks ----------------------------------------------------------------

class SslEmbedder:
    """A checkpoint's model on a device: waveforms (B, S) in, the chosen layer (B, F, D) out."""

    def __init__(self, checkpoint: SslCheckpoint, params: SslParams, device: torch.device = torch.device("cpu")):
        self.checkpoint = checkpoint
        n = checkpoint.num_layers
        if isinstance(params.layer, int) and params.layer > n:
            raise ValueError(f"layer {params.layer} asked of a {n}-layer {checkpoint.kind} model ({checkpoint.source})")
        self.layer = n if params.layer == "last" else params.layer  # int or "average"
        self.layers_run = n if self.layer == "average" else self.layer
        self.normalize = (params.normalize if params.normalize != "auto" else
                          checkpoint.normalize if checkpoint.normalize is not None else checkpoint.layer_norm_front_end)
        self.bf16 = params.precision == "bfloat16" or (params.precision == "auto" and device.type == "cuda")
        self.model = checkpoint.model.to(device).eval()
        self.device = device

    def describe(self) -> dict:
        return {"layer": self.layer, "num_layers": self.checkpoint.num_layers, "normalize_resolved": self.normalize,
                "autocast": "bfloat16" if self.bf16 else "none (float32)", "model_kind": self.checkpoint.kind}

    @torch.inference_mode()
    def __call__(self, waveforms: Tensor) -> Tensor:
        """(B, S) float32 -> (B, F, D) float32 on the CPU, F = (S - R) // H + 1."""
        x = waveforms.to(self.device, torch.float32)
        if self.normalize:
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, unbiased=False, keepdim=True)
                                                               + NORMALIZE_EPS)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            layers, _ = self.model.extract_features(x, num_layers=self.layers_run)  # [(B, F, D)] x layers_run
        if self.layer == "average":
            out = layers[0].float()
            for hidden in layers[1:]:
                out = out + hidden.float()
            out = out / len(layers)
        else:
            out = layers[self.layer - 1].float()
        return out.cpu()


@dataclass(frozen=True)
class Chunk:
    """SSL frames ``first .. stop-1`` go through the network; ``keep_start .. keep_stop-1``
    (global frame indices) are kept."""

    first: int
    keep_start: int
    keep_stop: int
    stop: int

    def samples(self, hop: int, field: int) -> tuple[int, int]:
        """The input sample range [start, stop) giving exactly frames first..stop-1."""
        return self.first * hop, (self.stop - 1) * hop + field


def plan_chunks(lo: int, hi: int, chunk_frames: int, context_frames: int) -> list[Chunk]:
    """Chunks keeping frames [lo, hi), ``chunk_frames`` each, with up to ``context_frames``
    on each side (clipped to [lo, hi))."""
    return [Chunk(max(lo, start - context_frames), start, min(start + chunk_frames, hi),
                  min(hi, start + chunk_frames + context_frames))
            for start in range(lo, hi, chunk_frames)]


def batches_of_chunks(chunks: list[Chunk], batch_size: int) -> Iterator[list[Chunk]]:
    """Consecutive chunks of equal input length, ``batch_size`` at most (the first and last
    chunks, whose context is clipped, usually go alone)."""
    batch: list[Chunk] = []
    for chunk in chunks:
        if batch and (len(batch) == batch_size or chunk.stop - chunk.first != batch[0].stop - batch[0].first):
            yield batch
            batch = []
        batch.append(chunk)
    if batch:
        yield batch


# --- the frame clock ----------------------------------------------------------------------

@dataclass(frozen=True)
class FrameWeights:
    """Video frame ``t`` = sum over k in ``indptr[t]:indptr[t+1]`` of ``weights[k]`` times
    SSL frame ``cols[k]`` (a global index: 0 starts at the WAV's first sample)."""

    indptr: np.ndarray  # (T + 1,) int64
    cols: np.ndarray  # (nnz,) int64, ascending within a row
    weights: np.ndarray  # (nnz,) float64, summing to 1 per row

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index - lo, col, weight) of the entries of rows lo..hi-1."""
        a, b = self.indptr[lo], self.indptr[hi]
        rows = np.repeat(np.arange(lo, hi), np.diff(self.indptr[lo:hi + 1])) - lo
        return rows, self.cols[a:b], self.weights[a:b]


def frame_spans(times: np.ndarray, video_fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) seconds of each frame's span: half-way to its neighbours (in time
    order), each half capped at half a nominal frame period; the ends mirror their one gap."""
    times = np.asarray(times, dtype=np.float64)
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    gaps = np.diff(ordered)
    if video_fps and video_fps > 0:
        period = 1.0 / video_fps
    else:
        period = float(np.median(gaps)) if len(gaps) else 0.04
    if len(gaps):
        before = np.concatenate([gaps[:1], gaps])  # the first frame mirrors its one gap
        after = np.concatenate([gaps, gaps[-1:]])
    else:
        before = after = np.full(1, period)
    half_before = np.minimum(before, period) / 2
    half_after = np.minimum(after, period) / 2
    start, stop = np.empty_like(times), np.empty_like(times)
    start[order], stop[order] = ordered - half_before, ordered + half_after
    return start, stop


def frame_weights(start_s: np.ndarray, stop_s: np.ndarray, hop: int, field: int,
                  sample_rate: int = SAMPLE_RATE) -> FrameWeights:
    """Overlap weights of each span [start_s, stop_s) (seconds after the WAV's first sample)
    with the SSL frames' 20 ms cells: cell j = [c_j - H/2, c_j + H/2), c_j = j H + R/2."""
    # position in cells: cell j covers u in [j, j + 1)
    a = (np.asarray(start_s, np.float64) * sample_rate - field / 2) / hop + 0.5
    b = (np.asarray(stop_s, np.float64) * sample_rate - field / 2) / hop + 0.5
    empty = b - a < 1e-9  # a zero-width span (a duplicated timestamp): the cell holding it
    b = np.where(empty, a, b)
    first = np.floor(a).astype(np.int64)
    count = np.where(empty, 1, np.maximum(np.ceil(b).astype(np.int64) - first, 1))
    indptr = np.concatenate([[0], np.cumsum(count)])
    rows = np.repeat(np.arange(len(a)), count)
    cols = first[rows] + (np.arange(indptr[-1]) - indptr[rows])
    overlap = np.minimum(b[rows], cols + 1) - np.maximum(a[rows], cols)
    weights = np.where(empty[rows], 1.0, np.clip(overlap, 0.0, None))
    totals = np.bincount(rows, weights, minlength=len(a))
    return FrameWeights(indptr, cols, weights / totals[rows])


def map_to_frames(ssl: Tensor, first_frame: int, fw: FrameWeights, lo: int, hi: int) -> Tensor:
    """(hi - lo, D) rows of video frames lo..hi-1 from ``ssl`` (F, D), whose row 0 is the
    global SSL frame ``first_frame``."""
    rows, cols, weights = fw.rows(lo, hi)
    picked = ssl[torch.from_numpy(cols - first_frame)] * torch.from_numpy(weights).to(ssl.dtype)[:, None]
    return torch.zeros(hi - lo, ssl.shape[1], dtype=ssl.dtype).index_add_(0, torch.from_numpy(rows), picked)


# --- the stream ---------------------------------------------------------------------------

def compute_ssl_features(wav_path: str, meta: dict, embed: SslEmbedder, params: SslParams,
                         out: FeatureFile | None = None, what: str = "ssl") -> np.ndarray | None:
    """(T, D) rows on the video frame clock of ``meta``, written to ``out`` block by block
    as chunks finish (returned instead when ``out`` is None)."""
    hop, field = conv_geometry(embed.model)
    times = np.asarray(meta["frame_times"], dtype=np.float64) - float(meta["audio_start_s"])
    n_frames = len(times)
    if n_frames == 0:
        return np.zeros((0, embed.checkpoint.dim), np.float32)
    start_s, stop_s = frame_spans(times, meta.get("video_fps"))
    fw = frame_weights(start_s, stop_s, hop, field, params.sample_rate)
    row_first = fw.cols[fw.indptr[:-1]]
    row_last = fw.cols[fw.indptr[1:] - 1]
    ready_after = np.maximum.accumulate(row_last)  # rows 0..t need SSL frames up to ready_after[t]
    still_needed = np.minimum.accumulate(row_first[::-1])[::-1]  # rows t.. need nothing below this
    rows_out: list[np.ndarray] = []

    with sf.SoundFile(wav_path) as wav:
        if wav.samplerate != params.sample_rate:
            raise ValueError(f"{wav_path}: sample rate {wav.samplerate}, the speech models need {params.sample_rate}")
        file_frames = (wav.frames - field) // hop + 1 if wav.frames >= field else 0
        lo, hi = min(0, int(fw.cols.min())), max(file_frames, int(fw.cols.max()) + 1)
        chunk_frames = max(1, round(params.chunk_s * params.sample_rate / hop))
        context_frames = round(params.context_s * params.sample_rate / hop)
        chunks = plan_chunks(lo, hi, chunk_frames, context_frames)

        def read(batch: list[Chunk]) -> tuple[list[Chunk], Tensor]:
            return batch, torch.from_numpy(np.stack([read_audio_segment(wav, *c.samples(hop, field)) for c in batch]))

        buffer, buffer_first = torch.zeros(0, embed.checkpoint.dim), lo  # computed SSL frames still needed
        next_row = 0
        progress = Progress(f"{what} of {wav_path}", n_frames)
        for batch, waveforms in prefetch(read(b) for b in batches_of_chunks(chunks, params.batch_size)):
            hidden = embed(waveforms)  # (B, F, D)
            kept = [hidden[i, c.keep_start - c.first:c.keep_stop - c.first] for i, c in enumerate(batch)]
            buffer = torch.cat([buffer, *kept])
            done = batch[-1].keep_stop  # SSL frames < done are computed
            stop_row = int(np.searchsorted(ready_after, done, side="left"))  # rows whose frames are all < done
            if stop_row > next_row:
                rows = map_to_frames(buffer, buffer_first, fw, next_row, stop_row).numpy()
                if out is not None:
                    out.write(next_row, rows)
                else:
                    rows_out.append(rows)
                next_row = stop_row
                progress.update(next_row)
                if next_row < n_frames:  # drop frames no later row needs
                    drop = min(int(still_needed[next_row]) - buffer_first, len(buffer))
                    if drop > 0:
                        buffer, buffer_first = buffer[drop:], buffer_first + drop
    if next_row != n_frames:
        raise RuntimeError(f"{what}: {n_frames - next_row} video frames were left without SSL frames (a bug)")
    return None if out is not None else np.concatenate(rows_out).astype(np.float32)


def extract_ssl(stream: str, wav_path: str, meta: dict, out_path: str, params: SslParams, *, weights: str | None,
                device: str = "auto", threads: int = 1) -> None:
    """Write ``out_path``: (T, D) hidden states of the ``stream`` model on the video's frame clock."""
    if weights is None:
        raise WeightsError(
            f"{stream}: weights.{stream} is not set. This stream needs a pretrained {stream} checkpoint (a Hugging "
            f"Face model folder with config.json, or a fairseq .pt); a randomly initialised self-supervised model "
            f"gives meaningless features, so it does not run without one. Set weights.{stream} in the config or "
            f"leave '{stream}' out of learning.streams.")
    dev = resolve_device(device)
    set_cpu_threads(threads)
    checkpoint = load_checkpoint(weights, stream)
    embed = SslEmbedder(checkpoint, params, dev)
    hop, field = conv_geometry(checkpoint.model)
    times = np.asarray(meta["frame_times"], dtype=np.float64)
    clock = (f"overlap-weighted mean of the {1000 * hop / params.sample_rate:g} ms SSL frames' cells over each video "
             f"frame's span (half-way to its neighbours)")
    attrs = provenance(stream, {**params.as_dict(), **embed.describe(), "hop_samples": hop,
                                "receptive_field_samples": field, "clock": clock}, checkpoint.weights_info(), dev)
    attrs["audio_missing"] = bool(meta["audio_missing"])
    with FeatureFile(out_path, times, checkpoint.dim, attrs) as out:
        compute_ssl_features(wav_path, meta, embed, params, out, what=stream)
    log.info("%s: %d frames -> %s (%s, layer %s)", stream, len(times), out_path, checkpoint.source, embed.layer)


def extract(job) -> None:
    """The ``wav2vec2``, ``hubert`` and ``wavlm`` streams' extractor (``vafusion.features.registry``)."""
    if job.stream not in KINDS:
        raise ValueError(f"vafusion.features.ssl extracts {', '.join(KINDS)}, not '{job.stream}'")
    extract_ssl(job.stream, job.wav, job.meta, job.output, SslParams(**job.settings),
                weights=job.weights.get(job.stream), device=job.device, threads=job.threads)
