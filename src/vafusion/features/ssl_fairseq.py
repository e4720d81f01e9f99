"""fairseq checkpoints of self-supervised speech models (wav2vec 2.0, HuBERT, WavLM) as
torchaudio models, read without running any of their code; ``load_checkpoint`` in
``vafusion.features.ssl_checkpoints`` sends a ``.pt`` file here.

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

  The file is read (and refused) by ``_torch_load_plain``, which, like
  ``FAIRSEQ_CONVERSION``, is in ``vafusion.features.ssl_checkpoints``: Hugging Face
  ``.bin`` files go through the same reader.

"""

from __future__ import annotations

import argparse
import ast
import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from vafusion.features.ssl_checkpoints import SslCheckpoint, _torch_load_plain
from vafusion.weights import WeightsError, sha256sum

log = logging.getLogger(__name__)


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
