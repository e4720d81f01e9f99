"""The feature streams: one registry entry per stream, read by the workflow (which rule
extracts it, from what, with which settings and resources), the aligner, the models
(which modality a stream feeds), the missing-audio fills and the reports.

Adding a stream is one module under ``vafusion/features/`` that defines
``extract(job: ExtractJob) -> None`` (write ``job.output`` with ``FeatureFile``: (T, D)
float32 rows on the video's frame clock and the provenance attributes) plus its
``Stream`` entry in ``BUILTIN`` below (or ``register()`` at run time, as the plug-in test
does). Nothing else names streams: the rules, the aligner, the normaliser, the models, the
fills, the reports and the cluster resources all read this table.

Sources:

- ``wav``: per video, from its 16 kHz mono WAV and frame clock (``audio/<video>.wav/.json``);
- ``faces``: per trial, from its aligned faces (``faces/<trial>.h5``);
- ``csv``: per trial, imported from a folder of per-trial CSV files computed elsewhere
  (``features.external`` in config.yaml: those streams are registered from the config).

This module imports nothing heavy: the Snakefile reads it at every parse.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

MODALITIES = ("audio", "visual")
SOURCES = ("wav", "faces", "csv")


@dataclass(frozen=True)
class ExtractJob:
    """Everything an extractor gets: its inputs, its output, its settings."""

    stream: str
    output: str  # the HDF5 file to write (``vafusion.features.common.FeatureFile``)
    settings: dict  # the stream's settings (``Stream.settings`` of the config): they trigger reruns
    wav: str | None = None  # source "wav": 16 kHz mono WAV of the video
    meta: dict | None = None  # source "wav" / "csv": the video's audio/frame-clock metadata (``read_audio_meta``)
    faces: str | None = None  # source "faces" / "csv": the trial's faces HDF5 (frame times, face_found)
    csv: str | None = None  # source "csv": the trial's CSV file
    weights: dict[str, str | None] = field(default_factory=dict)  # config["weights"][k] for k in Stream.weights
    device: str = "auto"
    threads: int = 1
    seed: int = 0  # seed of a RANDOM-INIT network (only where a stream allows one)


def _section(name: str) -> Callable[[dict], dict]:
    """Settings = the config's ``features.<name>`` section (plus the sample rate for audio)."""

    def settings(config: dict) -> dict:
        return dict(config["features"].get(name) or {})

    return settings


def _audio_section(name: str) -> Callable[[dict], dict]:
    def settings(config: dict) -> dict:
        return {**(config["features"].get(name) or {}), "sample_rate": config["media"]["sample_rate"]}

    return settings


@dataclass(frozen=True)
class Stream:
    """One feature stream.

    ``zeros``: what the missing-audio experiment's ``zeros`` fill (zeros at the model's
    audio input, Praveen & Alam) gives for this stream: ``"row"`` when the features are
    themselves the model's input (an all-zero row), ``"silence"`` when the network's input
    is the waveform (zero input = digital silence), or ``"network"`` when the module defines
    ``zero_input_row(job) -> (D,) array``, the network's output for an all-zero input of
    its own (VGGish: an all-zero log-mel example). Visual streams: unused."""

    name: str
    modality: str  # "audio" or "visual": which side of the fusion models it feeds
    source: str  # "wav", "faces" or "csv"
    module: str  # import path of the module defining extract(job)
    dim: int | None  # feature width; None: known from the settings or weights only (read from the files)
    settings: Callable[[dict], dict]  # config -> the settings that rerun the extraction when changed
    description: str  # one line for the reports
    weights: tuple[str, ...] = ()  # keys of config["weights"] the extractor reads
    optional_weights: dict[str, str] = field(default_factory=dict)  # weights key -> the setting that turns it on
    requires_weights: bool = False  # refuse to run without them (a random network would be meaningless)
    network: bool = False  # a neural network: GPU when there is one, threads by input size
    mem_mb: int = 2000
    runtime: int = 60  # minutes, sized for Aff-Wild2's longest videos
    zeros: str = "row"  # see the class docstring

    def extractor(self) -> Callable[[ExtractJob], None]:
        return importlib.import_module(self.module).extract


BUILTIN: dict[str, Stream] = {s.name: s for s in (
    Stream("iresnet50", "visual", "faces", "vafusion.features.iresnet", 512, _section("iresnet50"),
           "IResNet-50 (ArcFace) face embedding", weights=("iresnet50",), network=True, mem_mb=4000, runtime=240),
    Stream("vggish", "audio", "wav", "vafusion.features.vggish", 128, _section("vggish"),
           "VGGish audio embedding of the 0.96 s around each frame", weights=("vggish", "vggish_pca"),
           optional_weights={"vggish_pca": "pca"}, network=True,
           mem_mb=4000, runtime=120, zeros="network"),
    Stream("mfcc", "audio", "wav", "vafusion.features.mfcc", 39, _audio_section("mfcc"),
           "13 MFCC + deltas + delta-deltas, 25 ms around each frame", mem_mb=1500, runtime=30),
    Stream("egemaps", "audio", "wav", "vafusion.features.egemaps", 88, _audio_section("egemaps"),
           "openSMILE eGeMAPSv02: the 88 functionals of the 1-s window starting at each frame", mem_mb=1500,
           runtime=30),
    Stream("egemaps_lld", "audio", "wav", "vafusion.features.egemaps", 25, _audio_section("egemaps_lld"),
           "openSMILE eGeMAPSv02: the 25 low-level descriptors at each frame", mem_mb=1500, runtime=30),
    Stream("wav2vec2", "audio", "wav", "vafusion.features.ssl", None, _audio_section("wav2vec2"),
           "wav2vec 2.0 (user checkpoint): a layer's (or the layer average's) 20 ms frames over each frame's span",
           weights=("wav2vec2",), requires_weights=True, network=True, mem_mb=6000, runtime=120, zeros="silence"),
    Stream("hubert", "audio", "wav", "vafusion.features.ssl", None, _audio_section("hubert"),
           "HuBERT (user checkpoint): a layer's (or the layer average's) 20 ms frames over each frame's span",
           weights=("hubert",), requires_weights=True, network=True, mem_mb=6000, runtime=120, zeros="silence"),
    Stream("wavlm", "audio", "wav", "vafusion.features.ssl", None, _audio_section("wavlm"),
           "WavLM (user checkpoint): a layer's (or the layer average's) 20 ms frames over each frame's span",
           weights=("wavlm",), requires_weights=True, network=True, mem_mb=6000, runtime=120, zeros="silence"),
    Stream("landmarks", "visual", "faces", "vafusion.features.dlib_face", 136, _section("landmarks"),
           "dlib's 68 facial landmarks (pretrained), normalised to the eyes", mem_mb=1500, runtime=30),
    Stream("face_descriptor", "visual", "faces", "vafusion.features.dlib_face", 128, _section("face_descriptor"),
           "dlib's ResNet face descriptor (pretrained; an identity embedding)", mem_mb=1500, runtime=120),
)}

_REGISTERED: dict[str, Stream] = {}


def register(stream: Stream) -> Stream:
    """Add a stream at run time (a plug-in, or a test's); its name must be new."""
    if stream.name in BUILTIN or stream.name in _REGISTERED:
        raise ValueError(f"stream '{stream.name}' is registered already")
    if stream.modality not in MODALITIES or stream.source not in SOURCES:
        raise ValueError(f"stream '{stream.name}': modality must be one of {MODALITIES}, source one of {SOURCES}")
    _REGISTERED[stream.name] = stream
    return stream


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def external_streams(config: dict) -> dict[str, Stream]:
    """The streams of ``features.external``: features computed elsewhere, one CSV per trial."""
    out = {}
    for name, spec in (config.get("features", {}).get("external") or {}).items():
        out[name] = Stream(name, spec["modality"], "csv", "vafusion.features.external", None,
                           lambda config, name=name: dict(config["features"]["external"][name]),
                           f"external features from {spec['folder']}", mem_mb=1000, runtime=10)
    return out


def streams(config: dict | None = None) -> dict[str, Stream]:
    """Every stream known: built in, registered, and (with ``config``) the external ones."""
    known = {**BUILTIN, **_REGISTERED}
    if config is not None:
        for name, stream in external_streams(config).items():
            if name in known:
                raise ValueError(f"features.external.{name}: '{name}' is a built-in stream's name; choose another")
            known[name] = stream
    return known


def get(name: str, config: dict | None = None) -> Stream:
    known = streams(config)
    if name not in known:
        raise KeyError(f"unknown stream '{name}'; known: {', '.join(known)}")
    return known[name]


def by_modality(names, config: dict | None = None) -> dict[str, list[str]]:
    """{"audio": [...], "visual": [...]}: ``names`` split by their streams' modality, in order."""
    known = streams(config)
    out: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for name in names:
        if name not in known:
            raise KeyError(f"unknown stream '{name}'; known: {', '.join(known)}")
        out[known[name].modality].append(name)
    return out
