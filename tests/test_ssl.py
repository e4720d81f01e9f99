"""wav2vec2 / HuBERT / WavLM streams: checkpoints in both formats against transformers'
own models, the frame clock against a plain loop, chunking, bf16 autocast, and refusals.

The reference networks are transformers' (an independent implementation); the fairseq
files are written here from the reference's weights with fairseq's parameter names (a
table of this file's own), so a wrong rename in the loader shows up as a wrong output.
Every parameter of the reference is perturbed from its initialisation (LayerNorms are not
all-ones), so swapping two same-shaped tensors changes the output too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import json
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from vafusion.features.registry import ExtractJob
from vafusion.features.ssl import SslEmbedder, SslParams, extract, frame_spans, frame_weights, map_to_frames
from vafusion.features.ssl_checkpoints import conv_geometry, load_checkpoint
from vafusion.features.ssl_fairseq import parse_conv_layers
from vafusion.weights import WeightsError

SR = 16000
HOP, FIELD = 320, 400  # the tiny models' front end has the real geometry: (16, 10, 5), (16, 79, 64)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_kernel=(10, 79), conv_stride=(5, 64), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
# name: (kind, transformers classes, LayerNorm front end + pre-LN transformer ("large"), conv bias)
CASES = {
    "wav2vec2": ("wav2vec2", transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, False, False),
    "hubert_large": ("hubert", transformers.HubertConfig, transformers.HubertModel, True, True),
    "wavlm": ("wavlm", transformers.WavLMConfig, transformers.WavLMModel, False, False),
    "wavlm_large": ("wavlm", transformers.WavLMConfig, transformers.WavLMModel, True, True),
}


def reference_model(case: str, seed: int = 0) -> torch.nn.Module:
    """A tiny transformers model of ``case``, every parameter perturbed off its init."""
    kind, config_cls, model_cls, large, bias = CASES[case]
    extra = {"num_buckets": 16, "max_bucket_distance": 32} if kind == "wavlm" else {}
    config = config_cls(**TINY, **extra, feat_extract_norm="layer" if large else "group", do_stable_layer_norm=large,
                        conv_bias=bias)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_huggingface(model, folder: Path, do_normalize: bool | None = None) -> Path:
    model.save_pretrained(folder)
    if do_normalize is not None:
        (folder / "preprocessor_config.json").write_text(f'{{"do_normalize": {str(do_normalize).lower()}}}')
    return folder


# transformers name -> fairseq (unilm) name: this test's own table, from fairseq's module layout
HF_TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(\w+)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"feature_projection\.layer_norm\.(\w+)", r"layer_norm.\1"),
    (r"feature_projection\.projection\.(\w+)", r"post_extract_proj.\1"),
    (r"encoder\.pos_conv_embed\.conv\.bias", r"encoder.pos_conv.0.bias"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", r"encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", r"encoder.pos_conv.0.weight_v"),
    (r"encoder\.layer_norm\.(\w+)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.(\w+_proj)\.(\w+)", r"encoder.layers.\1.self_attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.weight",
     r"encoder.layers.\1.self_attn.relative_attention_bias.weight"),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(\w+)", r"encoder.layers.\1.self_attn.grep_linear.\2"),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"encoder.layers.\1.self_attn.grep_a"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(\w+)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(\w+)", r"encoder.layers.\1.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(\w+)", r"encoder.layers.\1.fc2.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(\w+)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"masked_spec_embed", r"mask_emb"),
]


def fairseq_state(model, large: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        norm = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)", key)
        if norm:  # fairseq: (conv, dropout, GroupNorm, GELU) or (conv, dropout, (T, LayerNorm, T), GELU)
            layer, param = norm.groups()
            out[f"feature_extractor.conv_layers.{layer}.2.{'1.' if large else ''}{param}"] = value.clone()
            continue
        for pattern, template in HF_TO_FAIRSEQ:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, template, key)] = value.clone()
                break
        else:
            raise AssertionError(f"test table lacks {key}")
    return out


def fairseq_model_cfg(case: str) -> dict:
    kind, _, _, large, bias = CASES[case]
    cfg = {"_name": kind, "extractor_mode": "layer_norm" if large else "default", "encoder_layers": 2,
           "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "activation_fn": "gelu",
           "layer_norm_first": large, "conv_feature_layers": "[(16, 10, 5)] + [(16, 79, 64)] * 1", "conv_bias": bias,
           "conv_pos": 16, "conv_pos_groups": 4, "dropout": 0.1}
    if kind == "wavlm":
        cfg.update(relative_position_embedding=True, num_buckets=16, max_distance=32, gru_rel_pos=True)
    return cfg


def save_fairseq(model, case: str, path: Path, layout: str = "hydra") -> Path:
    """A fairseq-style checkpoint: ``hydra`` (cfg.model / cfg.task, fairseq >= 2021),
    ``args`` (an argparse.Namespace, older fairseq; torch's legacy format), ``unilm`` (WavLM's flat cfg) or
    ``finetuned`` (a CTC model wrapping the pretrained one), with training-only extras."""
    kind, _, _, large, _ = CASES[case]
    state = fairseq_state(model, large)
    if kind == "wav2vec2":
        state["quantizer.vars"] = torch.randn(1, 8, 4)
    if kind == "hubert":
        state["label_embs_concat"] = torch.randn(10, 8)
        state["final_proj.weight"] = torch.randn(8, 32)
    cfg = fairseq_model_cfg(case)
    if layout == "hydra":
        checkpoint = {"cfg": {"model": cfg, "task": {"_name": "audio_pretraining", "normalize": large}}, "args": None}
    elif layout == "args":
        checkpoint = {"args": argparse.Namespace(arch=kind, normalize=large, **cfg), "cfg": None}
    elif layout == "unilm":
        checkpoint = {"cfg": {**cfg, "normalize": large}}
    elif layout == "finetuned":
        state = {**{f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()},
                 "w2v_encoder.proj.weight": torch.randn(5, 32), "w2v_encoder.proj.bias": torch.randn(5)}
        checkpoint = {"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": cfg, "task": {
            "normalize": large}}}, "task": {"normalize": large}}}
    checkpoint["model"] = state
    # pre-2021 checkpoints may predate torch's zip format (which memory mapping needs)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=layout != "args")
    return path


def reference_layers(model, waveform: torch.Tensor) -> list[torch.Tensor]:
    """transformers' hidden_states[1..N] of a (1, S) waveform."""
    with torch.no_grad():
        return list(model(waveform, output_hidden_states=True).hidden_states[1:])


def our_layers(checkpoint, waveform: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        layers, _ = checkpoint.model.extract_features(waveform)
    return layers


WAVE = torch.randn(1, 16000 + 123, generator=torch.Generator().manual_seed(1)) * 0.3


@pytest.mark.parametrize("case", list(CASES))
def test_both_formats_reproduce_transformers(case, tmp_path):
    kind, _, _, large, _ = CASES[case]
    model = reference_model(case)
    expected = reference_layers(model, WAVE)
    layouts = ["unilm"] if kind == "wavlm" else ["hydra"]
    if case == "wav2vec2":
        layouts += ["args", "finetuned"]
    paths = [save_huggingface(model, tmp_path / "hf")] + [
        save_fairseq(model, case, tmp_path / f"{layout}.pt", layout) for layout in layouts]
    for path in paths:
        checkpoint = load_checkpoint(path, kind)
        assert (checkpoint.kind, checkpoint.num_layers, checkpoint.dim) == (kind, 2, 32)
        assert conv_geometry(checkpoint.model) == (HOP, FIELD)
        got = our_layers(checkpoint, WAVE)
        assert len(got) == len(expected) == 2
        for layer, (ours, theirs) in enumerate(zip(got, expected), start=1):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5, msg=lambda m: f"{path} layer {layer}: {m}")
        if path.suffix == ".pt":  # the task's normalisation is read (fairseq: large models normalise)
            assert checkpoint.normalize is large
            assert checkpoint.source.endswith("(fairseq)")
        else:
            assert checkpoint.normalize is None and "huggingface" in checkpoint.source


def test_legacy_huggingface_bin_with_head_prefix_and_weight_g(tmp_path):
    """pytorch_model.bin of a model with a head (keys under "wav2vec2.") saved by an older
    transformers (weight norm as weight_g / weight_v)."""
    model = reference_model("wav2vec2")
    folder = save_huggingface(model, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        state[f"wav2vec2.{key}"] = value
    state["lm_head.weight"], state["lm_head.bias"] = torch.randn(7, 32), torch.randn(7)
    torch.save(state, folder / "pytorch_model.bin")
    checkpoint = load_checkpoint(folder, "wav2vec2")
    for ours, theirs in zip(our_layers(checkpoint, WAVE), reference_layers(model, WAVE)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)


def test_fairseq_without_post_extract_proj_is_identity(tmp_path):
    """fairseq leaves out post_extract_proj when the conv width equals the model width."""
    config = transformers.Wav2Vec2Config(**{**TINY, "conv_dim": (32, 32)})
    torch.manual_seed(3)
    model = transformers.Wav2Vec2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.feature_projection.projection.weight.copy_(torch.eye(32))
        model.feature_projection.projection.bias.zero_()
    state = {k: v for k, v in fairseq_state(model, False).items() if not k.startswith("post_extract_proj")}
    cfg = {**fairseq_model_cfg("wav2vec2"), "conv_feature_layers": "[(32, 10, 5), (32, 79, 64)]"}
    torch.save({"cfg": {"model": cfg, "task": {}}, "model": state}, tmp_path / "w.pt")
    checkpoint = load_checkpoint(tmp_path / "w.pt", "wav2vec2")
    for ours, theirs in zip(our_layers(checkpoint, WAVE), reference_layers(model, WAVE)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)


# --- the frame clock ----------------------------------------------------------------------

def reference_rows(ssl: np.ndarray, first_frame: int, times: np.ndarray, fps: float) -> np.ndarray:
    """Each video frame's row with plain loops: its span runs half-way to its neighbours
    (each half at most half a frame period; the ends mirror their one gap); the row is the
    overlap-weighted mean of the 20 ms cells centred on the SSL frames (j H + R/2)."""
    ssl = np.asarray(ssl, np.float64)
    order = sorted(range(len(times)), key=lambda t: times[t])
    period = 1.0 / fps
    rows = []
    for t in range(len(times)):
        pos = order.index(t)
        gaps = [times[order[i + 1]] - times[order[i]] for i in range(len(order) - 1)] or [period]
        before = gaps[pos - 1] if pos > 0 else gaps[0]
        after = gaps[pos] if pos < len(order) - 1 else gaps[-1]
        start, stop = times[t] - min(before, period) / 2, times[t] + min(after, period) / 2
        acc, total = np.zeros(ssl.shape[1]), 0.0
        for i in range(len(ssl)):
            centre = ((first_frame + i) * HOP + FIELD / 2) / SR
            overlap = min(stop, centre + HOP / 2 / SR) - max(start, centre - HOP / 2 / SR)
            if overlap > 0:
                acc += overlap * ssl[i]
                total += overlap
        if total == 0:  # a zero-width span: the cell holding its time
            for i in range(len(ssl)):
                centre = ((first_frame + i) * HOP + FIELD / 2) / SR
                if centre - HOP / 2 / SR <= times[t] < centre + HOP / 2 / SR:
                    acc, total = ssl[i], 1.0
        rows.append(acc / total)
    return np.array(rows)


@pytest.mark.parametrize("fps,jitter", [(25.0, 0.0), (30.0, 0.004), (60.0, 0.0), (29.97, 0.0)])
def test_frame_clock_matches_plain_loop(fps, jitter):
    rng = np.random.default_rng(int(fps))
    times = 0.013 + np.arange(40) / fps + rng.uniform(-jitter, jitter, 40)
    times[7] = times[6]  # a duplicated timestamp
    times[20:] += 0.3  # a gap (dropped frames)
    first_frame = -3  # SSL frames before the WAV's start (silence) count too
    ssl = rng.standard_normal((160, 5)).astype(np.float32)
    start, stop = frame_spans(times, fps)
    fw = frame_weights(start, stop, HOP, FIELD)
    ours = map_to_frames(torch.from_numpy(ssl).double(), first_frame, fw, 0, len(times)).numpy()
    np.testing.assert_allclose(ours, reference_rows(ssl, first_frame, times, fps), rtol=1e-9, atol=1e-9)
    # blocks of rows give the same as all rows at once
    halves = np.concatenate([map_to_frames(torch.from_numpy(ssl).double(), first_frame, fw, 0, 17).numpy(),
                             map_to_frames(torch.from_numpy(ssl).double(), first_frame, fw, 17, 40).numpy()])
    np.testing.assert_allclose(halves, ours)


# --- the stream end to end ----------------------------------------------------------------

def write_wav(path: Path, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    signal = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 1.5 * t)) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, signal, SR, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def run_stream(stream: str, weights: Path | None, wav: Path, times: np.ndarray, out: Path, audio_start: float = 0.0,
               fps: float = 25.0, **settings) -> ExtractJob:
    meta = {"frame_times": list(times), "audio_start_s": audio_start, "audio_missing": False, "video_fps": fps}
    job = ExtractJob(stream=stream, output=str(out), settings={"sample_rate": SR, **settings}, wav=str(wav), meta=meta,
                     weights={stream: None if weights is None else str(weights)}, device="cpu", threads=2)
    extract(job)
    return job


def read_features(path: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(path) as h5:
        return h5["features"][:], dict(h5.attrs)


@pytest.mark.parametrize("case,layer,do_normalize,normalize", [
    ("wav2vec2", 1, True, True),  # preprocessor_config.json says normalise, against the GroupNorm models' default
    ("hubert_large", "average", None, True),  # unsaid: LayerNorm front end, normalised
    ("wavlm", "last", None, False)])  # unsaid: GroupNorm front end, not normalised
def test_extract_equals_reference_on_the_frame_clock(case, layer, do_normalize, normalize, tmp_path):
    """One chunk (the whole WAV): rows = transformers' hidden states mapped by the plain loop."""
    kind = CASES[case][0]
    model = reference_model(case)
    folder = save_huggingface(model, tmp_path / "hf", do_normalize=do_normalize)
    signal = write_wav(tmp_path / "a.wav", 2.3)
    audio_start = 0.05
    times = audio_start + 0.1 + np.arange(45) / 25.0  # inside the audio
    run_stream(kind, folder, tmp_path / "a.wav", times, tmp_path / "f.h5", audio_start, layer=layer, chunk_s=60.0)
    features, attrs = read_features(tmp_path / "f.h5")

    used = (len(signal) - FIELD) // HOP * HOP + FIELD  # the WAV's whole frames: its last < 20 ms make none
    x = torch.from_numpy(signal[:used])[None]
    if normalize:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    hidden = reference_layers(model, x)
    ssl = (torch.stack(hidden).mean(0) if layer == "average" else hidden[-1 if layer == "last" else layer - 1])[0]
    expected = reference_rows(ssl.numpy(), 0, times - audio_start, 25.0)
    assert features.shape == (45, 32)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=3e-5)
    assert attrs["extractor"] == kind and attrs["weights_seed"] == -1 and not attrs["audio_missing"]
    assert attrs["weights"].startswith(str(folder)) and "huggingface" in attrs["weights"]
    assert re.fullmatch(r"[0-9a-f]{64}", attrs["weights_sha256"])
    assert f'"normalize_resolved": {str(normalize).lower()}' in attrs["params"]


def test_chunks_stitch_exactly_and_approximate_with_short_context(tmp_path):
    """Chunks whose context spans the whole WAV give exactly the one-chunk rows (the edges
    sit on the frame grid); a short context gives close rows. The video runs past the WAV
    (silence) and starts before it."""
    model = reference_model("wavlm")
    folder = save_huggingface(model, tmp_path / "hf")
    write_wav(tmp_path / "a.wav", 3.0, seed=2)
    times = -0.1 + np.arange(85) / 25.0
    whole = run_stream("wavlm", folder, tmp_path / "a.wav", times, tmp_path / "whole.h5", layer=2, chunk_s=60.0)
    run_stream("wavlm", folder, tmp_path / "a.wav", times, tmp_path / "wide.h5", layer=2, chunk_s=0.3,
               context_s=10.0, batch_size=3)
    run_stream("wavlm", folder, tmp_path / "a.wav", times, tmp_path / "short.h5", layer=2, chunk_s=0.7,
               context_s=0.5, batch_size=2)
    reference, _ = read_features(Path(whole.output))
    wide, _ = read_features(tmp_path / "wide.h5")
    short, _ = read_features(tmp_path / "short.h5")
    assert reference.shape == (85, 32) and np.isfinite(reference).all()
    np.testing.assert_allclose(wide, reference, rtol=1e-4, atol=3e-5)
    error = np.abs(short - reference).mean() / np.abs(reference).mean()
    assert error < 0.1, error


# wav2vec2 base's positional convolution has 768 channels in 16 groups (48 per group), kernel
# 128; the bf16 test keeps those per-group widths. With 2 channels per group (the tiny models'
# old geometry) oneDNN's bf16 grouped convolution is 80-106 % off on CPUs with AMX /
# AVX512-BF16 and right with oneDNN off: a test model must not sit on such a kernel.
REALISTIC_POS_CONV = dict(TINY, hidden_size=96, num_attention_heads=2, intermediate_size=128,
                          num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=2)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
def test_bf16_autocast_on_cpu_is_close_to_float32(tmp_path, onednn):
    """bfloat16 autocast on the CPU gives the float32 features within bf16's rounding, with
    oneDNN's kernels and without them, at wav2vec2's own channels per group."""
    config = transformers.Wav2Vec2Config(**REALISTIC_POS_CONV, feat_extract_norm="group", do_stable_layer_norm=False)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(config).eval()
    assert config.hidden_size // config.num_conv_pos_embedding_groups == 768 // 16
    folder = save_huggingface(model, tmp_path / "hf")
    write_wav(tmp_path / "a.wav", 1.5)
    times = np.arange(35) / 25.0
    with torch.backends.mkldnn.flags(enabled=onednn):
        run_stream("wav2vec2", folder, tmp_path / "a.wav", times, tmp_path / "f32.h5", layer="average")
        run_stream("wav2vec2", folder, tmp_path / "a.wav", times, tmp_path / "bf16.h5", layer="average",
                   precision="bfloat16")
    f32, _ = read_features(tmp_path / "f32.h5")
    bf16, attrs = read_features(tmp_path / "bf16.h5")
    params = json.loads(attrs["params"])
    assert params["autocast"] == "bfloat16", params.get("bf16_probe")  # the probe found bf16 right here
    assert "agrees with float32" in params["bf16_probe"]
    assert not np.array_equal(f32, bf16)  # autocast did run in bfloat16
    relative = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    assert relative < 0.03, relative


class MiscomputedConv1d(torch.nn.Conv1d):
    """A convolution whose bfloat16 kernel is wrong, as oneDNN's grouped one is on some CPUs:
    under autocast it returns the right shape with a wrong sign and scale."""

    def forward(self, x):
        y = torch.nn.Conv1d.forward(self, x)
        return -3 * y if torch.is_autocast_enabled(x.device.type) else y


def test_a_bf16_path_that_disagrees_with_float32_falls_back_and_says_which_layer(tmp_path, monkeypatch, caplog):
    from vafusion.features import ssl

    model = reference_model("wav2vec2")
    folder = save_huggingface(model, tmp_path / "hf")
    write_wav(tmp_path / "a.wav", 1.5)
    times = np.arange(35) / 25.0
    loaded = ssl.load_checkpoint

    def with_miscomputed_conv(path, kind):  # the checkpoint's model, its positional conv on a wrong bf16 kernel
        checkpoint = loaded(path, kind)
        conv = checkpoint.model.encoder.transformer.pos_conv_embed.conv  # weight-normed: its class is made on the fly
        conv.__class__ = type("MiscomputedConv1d", (type(conv),), {"forward": MiscomputedConv1d.forward})
        return checkpoint

    monkeypatch.setattr(ssl, "load_checkpoint", with_miscomputed_conv)
    run_stream("wav2vec2", folder, tmp_path / "a.wav", times, tmp_path / "f32.h5", layer="average")
    with caplog.at_level("WARNING"):
        run_stream("wav2vec2", folder, tmp_path / "a.wav", times, tmp_path / "bf16.h5", layer="average",
                   precision="bfloat16")
    f32, _ = read_features(tmp_path / "f32.h5")
    fallback, attrs = read_features(tmp_path / "bf16.h5")
    params = json.loads(attrs["params"])
    assert params["autocast"] == "none (float32)" and "DISAGREES" in params["bf16_probe"]
    assert "MiscomputedConv1d (4 groups of 8 channels, kernel 16)" in caplog.text
    np.testing.assert_array_equal(fallback, f32)  # float32 throughout, not a mix


def test_the_probe_names_the_first_layer_that_disagrees_and_passes_a_healthy_model():
    from vafusion.precision import probe_bf16

    torch.manual_seed(0)
    x = torch.randn(2, 8, 50)
    healthy = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv1d(16, 8, 3))
    ok = probe_bf16(healthy.eval(), lambda: healthy(x), "cpu")
    assert ok.agrees and 0 < ok.error < 0.03 and ok.layer is None
    broken = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 5, padding=2), torch.nn.ReLU(),
                                 MiscomputedConv1d(16, 8, 3, groups=8), torch.nn.Tanh())
    bad = probe_bf16(broken.eval(), lambda: broken(x), "cpu")
    assert not bad.agrees and bad.error > 0.5
    assert bad.layer == "MiscomputedConv1d (8 groups of 2 channels, kernel 3)"


# --- refusals -----------------------------------------------------------------------------

def test_missing_checkpoint_is_refused(tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    for stream in ("wav2vec2", "hubert", "wavlm"):
        with pytest.raises(WeightsError, match=rf"weights\.{stream} is not set.*random"):
            run_stream(stream, None, tmp_path / "a.wav", np.arange(10) / 25, tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists()


class RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_objects_are_refused_naming_the_file(tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    marker = tmp_path / "ran"
    model = reference_model("wav2vec2")
    pt = save_fairseq(model, "wav2vec2", tmp_path / "w.pt")
    checkpoint = torch.load(pt, weights_only=False)
    checkpoint["extra_state"] = {"meters": RunsCode(marker)}
    torch.save(checkpoint, pt)
    folder = save_huggingface(model, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "evil": RunsCode(marker)}, folder / "pytorch_model.bin")
    for path, file in ((pt, pt), (folder, folder / "pytorch_model.bin")):
        with pytest.raises(WeightsError, match=rf"'{re.escape(str(file))}' holds Python objects.*refused.*system"):
            run_stream("wav2vec2", path, tmp_path / "a.wav", np.arange(10) / 25, tmp_path / "f.h5")
    assert not marker.exists() and not (tmp_path / "f.h5").exists()


def test_omegaconf_checkpoint_is_refused_with_the_conversion(tmp_path, monkeypatch):
    """fairseq's DictConfig cfg (omegaconf is not installed: a stand-in module pickles it)."""
    package, module = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")
    DictConfig = type("DictConfig", (dict,), {"__module__": "omegaconf.dictconfig"})
    module.DictConfig, package.dictconfig = DictConfig, module
    monkeypatch.setitem(sys.modules, "omegaconf", package)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", module)
    torch.save({"cfg": DictConfig(model={}), "model": {"w": torch.zeros(1)}}, tmp_path / "hubert.pt")
    monkeypatch.undo()
    with pytest.raises(WeightsError, match=r"(?s)'.*hubert\.pt' stores its configuration as omegaconf.*"
                                           r"OmegaConf\.to_container.*weights\.hubert"):
        load_checkpoint(tmp_path / "hubert.pt", "hubert")


def test_wrong_model_family_and_bad_configs_are_refused(tmp_path):
    hubert = reference_model("hubert_large")
    with pytest.raises(WeightsError, match="holds a hubert model, not wavlm"):
        load_checkpoint(save_fairseq(hubert, "hubert_large", tmp_path / "h.pt"), "wavlm")
    with pytest.raises(WeightsError, match="is a 'hubert' model.*not wav2vec2"):
        load_checkpoint(save_huggingface(hubert, tmp_path / "hf"), "wav2vec2")
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt", "hubert")
    marker = tmp_path / "ran"
    with pytest.raises(WeightsError, match="not a list of"):  # evaluated without eval: nothing runs
        parse_conv_layers(f"[(512, 10, 5)] + __import__('pathlib').Path({str(marker)!r}).touch()")
    assert not marker.exists()
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    finetuned = {"cfg": {"model": {"_name": "hubert_ctc", "w2v_path": "/elsewhere/hubert.pt", "w2v_args": None}},
                 "model": {"w2v_encoder.proj.weight": torch.zeros(2, 2)}}
    torch.save(finetuned, tmp_path / "ft.pt")
    with pytest.raises(WeightsError, match="fine-tuned model whose configuration does not include"):
        load_checkpoint(tmp_path / "ft.pt", "hubert")
    checkpoint = load_checkpoint(tmp_path / "hf", "hubert")
    with pytest.raises(ValueError, match="layer 3 asked of a 2-layer"):
        SslEmbedder(checkpoint, SslParams(layer=3))
    with pytest.raises(ValueError, match="16000 Hz"):
        SslParams(sample_rate=44100)


def test_unreadable_files_are_refused_naming_them(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"'.*text\.pt' cannot be read"):
        load_checkpoint(tmp_path / "text.pt", "wavlm")
    folder = save_huggingface(reference_model("wavlm"), tmp_path / "hf")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])  # cut short
    with pytest.raises(WeightsError, match=r"'.*model\.safetensors' is not a readable safetensors file"):
        load_checkpoint(folder, "wavlm")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="neither model.safetensors nor pytorch_model.bin"):
        load_checkpoint(folder, "wavlm")
