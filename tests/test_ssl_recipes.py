"""Emotion-tuned speech checkpoints as the wav2vec2 / wavlm streams' weights: stand-in folders
with the layouts of the real ones, tiny, read by the streams' loader and checked against
transformers' own encoder (an independent implementation).

- ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``: config.json of a Wav2Vec2Config with
  the custom architecture ``Wav2Vec2ForSpeechClassification``; tensors ``wav2vec2.*`` (weight
  norm as ``weight_g`` / ``weight_v``: saved by transformers 4.17) and the regression head
  ``classifier.dense.*`` / ``classifier.out_proj.*``; ``pytorch_model.bin`` plus the hub's later
  ``model.safetensors`` conversion.
- any ``WavLMForSequenceClassification`` fine-tune: transformers' own class, saved by
  ``save_pretrained`` (``wavlm.*``, ``projector.*``, ``classifier.*``, ``layer_weights``).
- ``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes`` (the Odyssey 2024 SER baseline):
  config.json of its own ``SERConfig`` (model_type ``ser``) that names its encoder
  (``ssl_type: microsoft/wavlm-large``) instead of describing it; tensors ``ssl_model.*`` and
  the head ``pool_model.*`` / ``ser_model.*``; ``model.safetensors``.

Tiny means a 2-layer, 32-wide encoder with the real 20 ms / 25 ms front-end geometry (test_ssl's
TINY). The Odyssey stand-in's config.json therefore also carries the tiny geometry fields that
the real file takes from microsoft/wavlm-large; that the real file, as published, resolves to
WavLM-Large's architecture is checked against torchaudio's own ``wavlm_large``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from test_ssl import TINY, WAVE, our_layers, read_features, reference_layers, reference_rows, run_stream, write_wav
from vafusion.features.ssl_checkpoints import encoder_config, load_checkpoint
from vafusion.weights import WeightsError

LOGGER = "vafusion.features.ssl_checkpoints"


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter off its initialisation (LayerNorms not all-ones), so that a tensor
    loaded into the wrong place, or not at all, changes the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


# --- the three layouts --------------------------------------------------------------------

def audeering_folder(folder: Path, formats: tuple[str, ...] = ("bin", "safetensors")) -> torch.nn.Module:
    """audeering's layout; returns the encoder (a transformers Wav2Vec2Model, "large": LayerNorm
    front end, pre-LN transformer, conv bias) whose tensors it holds."""
    config = transformers.Wav2Vec2Config(**TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                                         num_labels=3)
    encoder = perturbed(transformers.Wav2Vec2Model(config), seed=1)
    state = {}
    for key, value in encoder.state_dict().items():  # transformers 4.17 / torch < 2.1 named weight norm so
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        state[f"wav2vec2.{key}"] = value.clone()
    assert "wav2vec2.masked_spec_embed" in state  # in the real file too (apply_spec_augment)
    hidden = config.hidden_size
    state.update({"classifier.dense.weight": torch.randn(hidden, hidden), "classifier.dense.bias": torch.randn(hidden),
                  "classifier.out_proj.weight": torch.randn(3, hidden), "classifier.out_proj.bias": torch.randn(3)})
    write_config(folder, {**config.to_dict(), "architectures": ["Wav2Vec2ForSpeechClassification"],
                          "finetuning_task": "wav2vec2_reg", "id2label": {"0": "arousal", "1": "dominance",
                                                                            "2": "valence"},
                          "label2id": {"arousal": 0, "dominance": 1, "valence": 2}, "model_type": "wav2vec2"})
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000}))
    if "bin" in formats:
        torch.save(state, folder / "pytorch_model.bin")
    if "safetensors" in formats:
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
    return encoder


def wavlm_classifier_folder(folder: Path) -> torch.nn.Module:
    """A WavLMForSequenceClassification fine-tune ("large" WavLM), saved by transformers itself;
    returns its encoder."""
    config = transformers.WavLMConfig(**TINY, num_buckets=16, max_bucket_distance=32, feat_extract_norm="layer",
                                      do_stable_layer_norm=True, use_weighted_layer_sum=True, num_labels=3)
    model = perturbed(transformers.WavLMForSequenceClassification(config), seed=2)
    model.save_pretrained(folder)
    return model.wavlm


ODYSSEY_CONFIG = {  # 3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes' config.json, as published
    "architectures": ["SERModel"],
    "auto_map": {"AutoConfig": "pipeline_utils.SERConfig",
                 "AutoModelForAudioClassification": "pipeline_utils.SERModel"},
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"}, "sampling_rate": 16000, "maxlen": 192000,
    "mean": -8.278621631819787e-05, "std": 0.08485510250851999, "classifier_dropout_prob": 0.5,
    "classifier_hidden_layers": 1, "hidden_size": 1024, "model_type": "ser", "num_attention_heads": 16,
    "num_classes": 3, "num_hidden_layers": 24, "ssl_type": "microsoft/wavlm-large", "torch_dtype": "float32",
    "transformers_version": "4.34.0.dev0"}
# microsoft/wavlm-large's values, which the real file takes from that encoder, shrunk (test_ssl's TINY)
TINY_GEOMETRY = {k: v for k, v in TINY.items() if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads")}


def odyssey_folder(folder: Path) -> torch.nn.Module:
    """The Odyssey 2024 baseline's layout; returns the encoder (a transformers WavLMModel as
    microsoft/wavlm-large's config builds it: LayerNorm front end, pre-LN, no conv bias)."""
    config = transformers.WavLMConfig(**TINY, num_buckets=16, max_bucket_distance=32, feat_extract_norm="layer",
                                      do_stable_layer_norm=True, conv_bias=False)
    encoder = perturbed(transformers.WavLMModel(config), seed=3)
    hidden = config.hidden_size
    state = {f"ssl_model.{k}": v.clone() for k, v in encoder.state_dict().items()}
    state.update({  # AttentiveStatisticsPooling(hidden) and EmotionRegression(2 hidden, hidden, 1 layer, 3 outputs)
        "pool_model.sap_linear.weight": torch.randn(hidden, hidden), "pool_model.sap_linear.bias": torch.randn(hidden),
        "pool_model.attention": torch.randn(hidden, 1), "ser_model.fc.0.0.weight": torch.randn(hidden, 2 * hidden),
        "ser_model.fc.0.0.bias": torch.randn(hidden), "ser_model.fc.0.1.weight": torch.randn(hidden),
        "ser_model.fc.0.1.bias": torch.randn(hidden), "ser_model.out.0.weight": torch.randn(3, hidden),
        "ser_model.out.0.bias": torch.randn(3)})
    write_config(folder, {**ODYSSEY_CONFIG, "hidden_size": hidden, "num_hidden_layers": config.num_hidden_layers,
                          "num_attention_heads": config.num_attention_heads, **TINY_GEOMETRY, "num_buckets": 16,
                          "max_bucket_distance": 32})
    (folder / "preprocessor_config.json").write_text('{"mean": 10}')  # as published: says nothing of normalising
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return encoder


def assert_same_layers(checkpoint, encoder) -> None:
    got, expected = our_layers(checkpoint, WAVE), reference_layers(encoder, WAVE)
    assert len(got) == len(expected) == 2
    for layer, (ours, theirs) in enumerate(zip(got, expected), start=1):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5, msg=lambda m: f"layer {layer}: {m}")


def ignored_names(caplog) -> set[str]:
    """Tensor names the loader said it ignored (its INFO line)."""
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and "ignored" in r.getMessage()]
    assert len(lines) == 1, lines
    return set(lines[0].split(": ", 2)[-1].split(", "))


# --- loading: the encoder lands, the head is ignored by name -------------------------------

@pytest.mark.parametrize("formats", [("bin", "safetensors"), ("bin",)], ids=["safetensors", "bin"])
def test_audeering_layout_loads_its_encoder_and_names_the_ignored_head(formats, tmp_path, caplog):
    folder = tmp_path / "audeering"
    encoder = audeering_folder(folder, formats)
    with caplog.at_level("INFO", logger=LOGGER):
        checkpoint = load_checkpoint(folder, "wav2vec2")
    assert (checkpoint.num_layers, checkpoint.dim, checkpoint.layer_norm_front_end) == (2, 32, True)
    assert checkpoint.normalize is True  # preprocessor_config.json's do_normalize
    read = "model.safetensors" if "safetensors" in formats else "pytorch_model.bin"  # safetensors first
    assert checkpoint.source.endswith(f"(huggingface wav2vec2: {read})")
    assert_same_layers(checkpoint, encoder)
    assert ignored_names(caplog) == {"classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias",
                                     "classifier.out_proj.weight", "wav2vec2.masked_spec_embed"}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_wavlm_sequence_classifier_loads_its_encoder_and_names_the_ignored_head(tmp_path, caplog):
    folder = tmp_path / "wavlm-ser"
    encoder = wavlm_classifier_folder(folder)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["WavLMForSequenceClassification"]
    with caplog.at_level("INFO", logger=LOGGER):
        checkpoint = load_checkpoint(folder, "wavlm")
    assert_same_layers(checkpoint, encoder)
    assert ignored_names(caplog) == {"classifier.bias", "classifier.weight", "layer_weights", "projector.bias",
                                     "projector.weight", "wavlm.masked_spec_embed"}


def test_odyssey_layout_loads_its_named_encoder_and_names_the_ignored_head(tmp_path, caplog):
    folder = tmp_path / "odyssey"
    encoder = odyssey_folder(folder)
    with caplog.at_level("INFO", logger=LOGGER):
        checkpoint = load_checkpoint(folder, "wavlm")
    assert checkpoint.kind == "wavlm" and checkpoint.layer_norm_front_end
    assert checkpoint.normalize is None  # preprocessor_config.json has no do_normalize: ssl.py's auto decides
    assert "(huggingface ser around microsoft/wavlm-large: model.safetensors)" in checkpoint.source
    assert_same_layers(checkpoint, encoder)
    assert ignored_names(caplog) == {
        "pool_model.attention", "pool_model.sap_linear.bias", "pool_model.sap_linear.weight", "ser_model.fc.0.0.bias",
        "ser_model.fc.0.0.weight", "ser_model.fc.0.1.bias", "ser_model.fc.0.1.weight", "ser_model.out.0.bias",
        "ser_model.out.0.weight", "ssl_model.masked_spec_embed"}
    assert "around microsoft/wavlm-large (ssl_type)" in caplog.text
    with pytest.raises(WeightsError, match=r"is a 'wavlm' model.*set it as weights\.wavlm"):
        load_checkpoint(folder, "wav2vec2")  # the named encoder's family decides the stream


def test_the_published_odyssey_config_is_wavlm_large(tmp_path):
    """The real config.json, untouched, resolves to the architecture of torchaudio's own
    WavLM-Large (every tensor's shape, the head count, pre-LN order, bucketing), and the
    wav2vec2 wrapper to that of wav2vec 2.0 Large (LV-60k, the architecture of -large-robust);
    so does a wrapper that gives nothing but the encoder's name."""
    import torchaudio.models as models
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config, _get_config_wavlm

    bare = {"model_type": "ser", "ssl_type": "microsoft/wavlm-large"}
    robust = {"ssl_type": "facebook/wav2vec2-large-robust"}
    cases = [(config, models.wavlm_large, models.wavlm_model, _get_config_wavlm) for config in (ODYSSEY_CONFIG, bare)]
    cases += [(config, models.wav2vec2_large_lv60k, models.wav2vec2_model, _get_config)
              for config in ({**ODYSSEY_CONFIG, **robust}, {**bare, **robust})]
    for config, preset, build, arch in cases:
        cfg = encoder_config(config, "test")
        assert cfg["model_type"] == ("wavlm" if preset is models.wavlm_large else "wav2vec2")
        with torch.device("meta"):
            ours, theirs = build(**arch(SimpleNamespace(**cfg)), aux_num_out=None), preset()
        shapes = [{k: v.shape for k, v in model.state_dict().items()} for model in (ours, theirs)]
        assert shapes[0] == shapes[1]
        for a, b in zip(ours.encoder.transformer.layers, theirs.encoder.transformer.layers, strict=True):
            assert a.layer_norm_first and b.layer_norm_first
            assert (a.attention.num_heads, getattr(a.attention, "max_distance", None)) == \
                (b.attention.num_heads, getattr(b.attention, "max_distance", None))
    with pytest.raises(WeightsError, match=r"names its encoder, 'facebook/hubert-large-ll60k' \(ssl_type\).*knows"):
        encoder_config({**ODYSSEY_CONFIG, "ssl_type": "facebook/hubert-large-ll60k"}, "test")


def test_odyssey_stream_rows_equal_the_reference_on_the_frame_clock(tmp_path):
    """Through the wavlm stream: the last layer, input normalised (auto: the checkpoint does not
    say, and a LayerNorm front end is normalised), mapped onto 25 fps video frames."""
    encoder = odyssey_folder(tmp_path / "odyssey")
    signal = write_wav(tmp_path / "a.wav", 1.6)
    times = 0.1 + np.arange(30) / 25.0
    run_stream("wavlm", tmp_path / "odyssey", tmp_path / "a.wav", times, tmp_path / "f.h5", layer="last", chunk_s=60.0)
    features, attrs = read_features(tmp_path / "f.h5")
    used = (len(signal) - 400) // 320 * 320 + 400  # the WAV's whole 20 ms frames
    x = torch.from_numpy(signal[:used])[None]
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    expected = reference_rows(reference_layers(encoder, x)[-1][0].numpy(), 0, times, 25.0)
    assert features.shape == (30, 32)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=3e-5)
    params = json.loads(attrs["params"])
    assert (params["layer"], params["num_layers"], params["normalize_resolved"]) == (2, 2, True)
    assert "ser around microsoft/wavlm-large" in attrs["weights"]


# --- refusals: no encoder tensor is dropped or made up -------------------------------------

def without(folder: Path, name: str) -> None:
    state = load_file(folder / "model.safetensors")
    del state[name]
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("layout,kind,name", [
    ("audeering", "wav2vec2", "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"),
    ("audeering", "wav2vec2", "wav2vec2.encoder.pos_conv_embed.conv.weight_g"),
    ("odyssey", "wavlm", "ssl_model.encoder.layers.0.attention.q_proj.bias"),  # one of WavLM's q / k / v
    ("odyssey", "wavlm", "ssl_model.feature_extractor.conv_layers.1.layer_norm.weight")])
def test_a_missing_encoder_tensor_is_refused_by_name(layout, kind, name, tmp_path):
    folder = tmp_path / layout
    (audeering_folder(folder, ("safetensors",)) if layout == "audeering" else odyssey_folder(folder))
    without(folder, name)
    shown = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", name)  # as torch names it now
    with pytest.raises(WeightsError, match=rf"(?s)'{re.escape(str(folder))}' does not fit the {kind} architecture.*"
                                           rf"missing \(1\): {re.escape(shown)}$"):
        load_checkpoint(folder, kind)


def test_encoder_tensors_no_part_takes_are_refused_and_unknown_heads_are_named(tmp_path, caplog):
    folder = tmp_path / "wavlm-ser"
    wavlm_classifier_folder(folder)
    state = load_file(folder / "model.safetensors")
    for extra, message in [("wavlm.encoder.layers.0.attention.k_scale", r"unexpected \(1\): wavlm\.encoder\.layers\.0"
                                                                         r"\.attention\.k_scale"),
                           ("wavlm.adapter.proj.weight", r"1 tensors of no part of the encoder: wavlm\.adapter\.proj"),
                           ("wavlm.encoder.layers.1.final_layer_norm.weight", r"wrong shapes \(1\): wavlm\.encoder\."
                                                                              r"layers\.1\.final_layer_norm\.weight: "
                                                                              r"file \(7,\), config\.json \(32,\)")]:
        save_file({**state, extra: torch.zeros(7)}, folder / "model.safetensors")
        with pytest.raises(WeightsError, match=message):
            load_checkpoint(folder, "wavlm")
    # beside the encoder, in a module no known head has: loaded without it, and said so
    save_file({**state, "regressor.weight": torch.zeros(3, 32)}, folder / "model.safetensors")
    with caplog.at_level("INFO", logger=LOGGER):
        load_checkpoint(folder, "wavlm")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].endswith("of no known task head: regressor.weight")
