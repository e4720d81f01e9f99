"""Feature streams as plug-ins: a stream registered in a test is extracted, aligned, given a
missing-audio fill and trained on by a fusion model with no other module edited; stream
configurations that cannot work stop at planning, naming the key."""

from __future__ import annotations

import copy
import json
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, snakemake, write_config
from vafusion.audio import extract_audio
from vafusion.faces import FaceTrackWriter, encode_face
from vafusion.features import registry
from vafusion.features.silence import fill_features, read_fill
from vafusion.learning.align import align_trial
from vafusion.learning.provenance import aligned_record
from vafusion.learning.streams import run_streams, split_run, stream_problems, used_streams
from vafusion.learning.predict import load_model
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())

# Two streams written here, as a user's plug-in module would be: the audio one from the WAV
# on the video's frame clock, the visual one from the aligned faces.
PLUGIN = '''
import h5py
import numpy as np
import soundfile as sf
import torch

from vafusion.faces import FaceJpegs, decode_faces
from vafusion.features.common import FeatureFile, provenance


def extract(job):
    if job.stream == "test_loudness":  # log RMS and its square, over 40 ms centred on each frame
        samples, rate = sf.read(job.wav, dtype="float32")
        times = np.asarray(job.meta["frame_times"])
        rows = []
        for t in times:
            centre = int(round((t - job.meta["audio_start_s"]) * rate))
            window = samples[max(0, centre - 320):centre + 320]
            level = float(np.log(np.sqrt(np.mean(window**2)) + job.settings["floor"])) if len(window) else 0.0
            rows.append([level, level**2])
    else:  # test_brightness: mean of each colour channel of the face
        with h5py.File(job.faces) as h5:
            times = h5["timestamps"][:]
            faces = decode_faces(FaceJpegs(h5)[:])
        rows = faces.reshape(len(faces), -1, 3).mean(axis=1) / 255.0
    attrs = provenance(job.stream, dict(job.settings), None, torch.device("cpu"))
    with FeatureFile(job.output, times, len(rows[0]), attrs) as out:
        out.write(0, np.asarray(rows, np.float32))
'''


@pytest.fixture
def plugin_streams(tmp_path, monkeypatch):
    module = tmp_path / "plugin" / "my_streams.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(module.parent))
    audio = registry.register(registry.Stream(
        "test_loudness", "audio", "wav", "my_streams", 2, lambda config: {"floor": 1e-4}, "log loudness"))
    visual = registry.register(registry.Stream(
        "test_brightness", "visual", "faces", "my_streams", 3, lambda config: {}, "face colour"))
    yield audio, visual
    registry.unregister(audio.name)
    registry.unregister(visual.name)
    sys.modules.pop("my_streams", None)


def make_trial(tmp: Path, name: str, seconds: float, rng) -> dict:
    """A video with a tone that gets louder and a face that gets brighter; labels follow both."""
    from conftest import make_video

    video = make_video(tmp / f"{name}.mp4", seconds=seconds)
    meta = extract_audio(video, tmp / f"{name}.wav", tmp / f"{name}.json")
    n = len(meta["frame_times"])
    ramp = np.linspace(0, 1, n) ** (1 + rng.random())
    with h5py.File(tmp / f"{name}_faces.h5", "w") as h5:
        writer = FaceTrackWriter(h5)
        for t, level in zip(meta["frame_times"], ramp):
            writer.add(t, encode_face(np.full((112, 112, 3), int(40 + 180 * level), np.uint8)))
        writer.flush()
    with h5py.File(tmp / f"{name}_labels.h5", "w") as h5:
        h5["valence"] = (ramp - 0.5).astype(np.float32)
        h5["arousal"] = (0.5 - ramp).astype(np.float32)
    return {"meta": meta, "n": n}


def test_a_stream_registered_here_is_extracted_aligned_filled_and_trained_on(plugin_streams, tmp_path):
    audio, visual = plugin_streams
    streams = {"audio": [audio.name], "visual": [visual.name]}
    rng = np.random.default_rng(0)
    names = [f"t{i}" for i in range(5)]
    trials = {n: make_trial(tmp_path, n, 1.0 + 0.2 * i, rng) for i, n in enumerate(names)}
    aligned = {}
    for name in names:
        features = {}
        for stream in (audio, visual):  # the workflow's extract_<stream> job, through the registry
            features[stream.name] = tmp_path / f"{name}_{stream.name}.h5"
            stream.extractor()(registry.ExtractJob(
                stream=stream.name, output=str(features[stream.name]), settings=stream.settings(CONFIG),
                wav=str(tmp_path / f"{name}.wav"), meta=trials[name]["meta"], faces=str(tmp_path / f"{name}_faces.h5")))
        aligned[name] = tmp_path / f"{name}_aligned.h5"
        align_trial(aligned[name], trial=name, partition="train", features=features,
                    faces=tmp_path / f"{name}_faces.h5", audio_meta=tmp_path / f"{name}.json",
                    labels=tmp_path / f"{name}_labels.h5")
    with h5py.File(aligned["t0"]) as h5:
        assert h5["test_loudness"].shape == (trials["t0"]["n"], 2) and h5["test_brightness"].shape[1] == 3
        assert json.loads(h5.attrs["test_loudness_provenance"])["extractor"] == "test_loudness"

    # the missing-audio fills, by the stream's own extractor on silence
    fills_path = tmp_path / "fills.h5"
    fill_features(fills_path, audio, registry.ExtractJob(stream=audio.name, output="", settings={"floor": 1e-4}))
    fills = read_fill({audio.name: fills_path}, "silence")
    assert fills[audio.name] == pytest.approx([np.log(1e-4), np.log(1e-4) ** 2], rel=1e-4)  # log of the floor
    assert not read_fill({audio.name: fills_path}, "zeros")[audio.name].any()  # hand-made: zeros at the model's input

    fold = {"fold": 0, "train": names[:4], "validation": names[4:]}
    record = aligned_record([aligned[n] for n in names], streams["visual"] + streams["audio"])
    cfg = TrainConfig.from_dict({**CONFIG["learning"]["train"], "window": 20, "hop": 10, "max_epochs": 3,
                                 "selection": "validation",
                                 "missing_audio": {"shares": [0.0, 0.5], "patterns": ["contiguous"],
                                                   "fill": "zeros"}}, seed=0)
    for model in ("jca", "tcn_transformer"):
        section = "tcn_transformer" if model == "tcn_transformer" else "cross_attention"
        metrics = train_fold(model, CONFIG["learning"][section], fold, aligned, tmp_path / model, cfg,
                             streams=streams, audio_fill=read_fill({audio.name: fills_path}, "zeros"), device="cpu",
                             feature_provenance=record)
        assert metrics["streams"] == streams and np.isfinite(metrics["ccc_mean"])
        assert metrics["stream_sources"][audio.name]["extractor"] == "test_loudness"
        assert set(metrics["missing_audio"]["contiguous"]["all_trials"]) == {"0", "0.5"}
        net, normalizer, _, _ = load_model(tmp_path / model / "model.pt", torch.device("cpu"))
        assert net.fused_streams == streams and set(normalizer.mean) == {audio.name, visual.name}
    # the TCN + Transformer keeps one TCN per stream, widths from tcn_channels' default
    assert set(net.tcns) == {audio.name, visual.name}
    assert net.tcns[audio.name][-1].conv2.out_channels == CONFIG["learning"]["tcn_transformer"]["tcn_channels"][
        "default"][-1]


def test_a_model_reads_only_its_stream_set_from_an_aligned_file(tmp_path):
    """Each run fuses the streams of its set, in the order visual then audio."""
    learning = copy.deepcopy(CONFIG["learning"])
    learning["stream_sets"] = {"small": {"audio": ["mfcc"], "visual": ["landmarks"]}}
    assert run_streams("jca@small", learning) == {"audio": ["mfcc"], "visual": ["landmarks"]}
    assert run_streams("jca", learning) == learning["streams"]
    assert split_run("rjca_iaca@small") == ("rjca_iaca", "small") and split_run("ca") == ("ca", "default")
    config = {**copy.deepcopy(CONFIG), "learning": {**learning, "models": ["jca", "ca@small"]}}
    assert used_streams(config) == ["iresnet50", "vggish", "mfcc", "landmarks"]


def bad(change) -> list[str]:
    config = copy.deepcopy(CONFIG)
    change(config)
    return stream_problems(config)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["learning"]["streams"].update(audio=["vggish", "opensmile"]),
     "learning.streams.audio: unknown stream 'opensmile'"),
    (lambda c: c["learning"]["streams"].update(visual=["mfcc"]), "learning.streams.visual: 'mfcc' is an audio stream"),
    (lambda c: c["learning"]["stream_sets"]["pretrained"].update(visual=[]),
     "learning.stream_sets.pretrained.visual: empty"),
    (lambda c: c["learning"].update(models=["jca@nosuchset"]),
     "learning.models: 'jca@nosuchset' names the stream set 'nosuchset'"),
    (lambda c: c["learning"]["streams"].update(audio=["wav2vec2"]),
     "weights.wav2vec2: the stream 'wav2vec2' needs a checkpoint"),
    (lambda c: (c["learning"]["tcn_transformer"]["tcn_channels"].pop("default"),
                c["learning"].update(models=["tcn_transformer@pretrained"])),
     "learning.tcn_transformer.tcn_channels: no widths for the stream 'landmarks'"),
    (lambda c: c["features"]["external"].update(iresnet50={"modality": "visual", "folder": "x", "columns": ["a"]}),
     "features.external.iresnet50: 'iresnet50' is already a stream's name"),
])
def test_stream_configurations_that_cannot_work_name_their_key(change, message):
    problems = bad(change)
    assert any(message in p for p in problems), problems


def test_the_default_configuration_has_no_stream_problem():
    assert stream_problems(CONFIG) == []


@pytest.mark.e2e
def test_the_workflow_stops_at_planning_on_an_unknown_stream(demo_dataset, tmp_path):
    path = write_config(tmp_path, demo_dataset)
    config = yaml.safe_load(path.read_text())
    config["learning"]["stream_sets"]["pretrained"]["visual"] = ["landmarks", "action_units"]
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0
    assert "learning.stream_sets.pretrained.visual: unknown stream 'action_units'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.e2e
def test_a_speech_model_folder_passes_planning_and_a_missing_path_does_not(demo_dataset, tmp_path):
    """weights.wav2vec2 may be a Hugging Face model folder (README, Features): planning takes
    a folder that exists (the extraction job reads it) and stops on a path that does not."""
    path = write_config(tmp_path, demo_dataset)
    config = yaml.safe_load(path.read_text())
    config["learning"]["stream_sets"]["speech"] = {"audio": ["wav2vec2"], "visual": ["landmarks"]}
    config["learning"]["models"] = ["jca@speech"]
    config["learning"]["experiments"], config["learning"]["ensembles"] = {}, {}
    (tmp_path / "hf model").mkdir()
    config["weights"]["wav2vec2"] = str(tmp_path / "hf model")
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rule extract_wav2vec2:" in proc.stdout + proc.stderr
    config["weights"]["wav2vec2"] = str(tmp_path / "no such model")
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0
    assert f"weights.wav2vec2: '{tmp_path / 'no such model'}' does not exist" in proc.stdout + proc.stderr


# The same streams as a plug-in vafusion does not know of: a .py file named by
# features.plugins, whose entries carry their settings' schema (with defaults, so the config
# needs no section) and a weights key that is not the stream's name.
PLUGIN_FILE = PLUGIN + '''

def gain_of(job):
    return float(open(job.weights["brightness_gain"]).read()) if job.weights.get("brightness_gain") else 1.0


_extract = extract


def extract(job):  # noqa: F811 - the brightness scaled by the optional gain file
    _extract(job)
    if job.stream == "test_brightness":
        with h5py.File(job.output, "r+") as h5:
            h5["features"][...] = h5["features"][...] * gain_of(job)


from vafusion.features.registry import Stream, audio_section, section  # noqa: E402

STREAMS = [
    Stream("test_loudness", "audio", "wav", "vafusion_plugin_my_plugin", 2, audio_section("test_loudness"),
           "log loudness", schema={"type": "object", "additionalProperties": False,
                                   "properties": {"floor": {"description": "added before the log", "type": "number",
                                                            "exclusiveMinimum": 0, "default": 0.0001}}}),
    Stream("test_brightness", "visual", "faces", "vafusion_plugin_my_plugin", 3, section("test_brightness"),
           "face colour", weights={"brightness_gain": "a text file holding a gain"},
           optional_weights={"brightness_gain": "use_gain"},
           schema={"type": "object", "additionalProperties": False,
                   "properties": {"use_gain": {"description": "scale by weights.brightness_gain", "type": "boolean",
                                               "default": False}}}),
]
'''


def hsemotion_stand_in(path: Path) -> Path:
    """An ONNX file of HSEmotion's enet_b0_8_va_mtl layout: input 'input' (N, 3, 224, 224),
    output 'output' of 8 expression logits, valence, arousal."""
    import warnings

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
            self.head = torch.nn.Linear(4, 10)

        def forward(self, x):
            return torch.tanh(self.head(self.conv(x).mean(dim=(2, 3))))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(StandIn().eval(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=11, dynamo=False)
    return path


@pytest.mark.e2e
def test_a_plugin_and_a_face_model_named_in_the_config_are_planned_and_run_by_the_workflow(demo_dataset, tmp_path):
    """No file of vafusion edited. The plug-in's settings get their schema and defaults, its
    weights key is checked and becomes an input, and its streams are extracted, filled and
    aligned by a real run. A face model with its own valence/arousal columns (an
    HSEmotion-layout ONNX file) becomes a stream and a zero-training model, enet_va, scored
    on a fold and predicting the test trials."""
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN_FILE)
    gain = tmp_path / "gain.txt"
    gain.write_text("2.0")
    onnx_file = hsemotion_stand_in(tmp_path / "enet_b0_8_va_mtl.onnx")
    path = write_config(tmp_path, demo_dataset)
    config = yaml.safe_load(path.read_text())
    config["features"]["plugins"] = [str(plugin)]
    config["features"]["test_brightness"] = {"use_gain": True}
    config["features"]["face_models"] = {"enet": {"kind": "onnx", "weights": str(onnx_file), "input": "input",
                                                  "output": "output", "valence_arousal": [8, 9]}}
    config["weights"]["brightness_gain"] = str(gain)
    config["learning"]["stream_sets"] = {"plug": {"audio": ["test_loudness"], "visual": ["test_brightness"]}}
    config["learning"].update(models=["jca@plug"], experiments={}, ensembles={})
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "--configfile", str(path), "-n")
    out = plan.stdout + plan.stderr
    for rule in ("extract_test_loudness", "extract_test_brightness", "fill_test_loudness", "train_model",
                 "extract_enet", "score_baseline", "predict_baseline"):
        assert f"rule {rule}:" in out, rule
    assert str(gain) in out and str(onnx_file) in out  # the files are inputs of their streams

    trial = sorted(p.stem for p in (demo_dataset / "annotations" / "train").glob("*.txt"))[0]
    test_trial = (demo_dataset / "test_trials.txt").read_text().split()[0]
    targets = [f"results/aligned/plug/{trial}.h5", "results/features/fills/test_loudness.h5",
               "results/models/enet_va/seed0/fold0/metrics.json", f"results/predictions/enet_va/test/{test_trial}.txt"]
    snakemake(tmp_path, "--configfile", str(path), "--cores", "2", *targets)
    with h5py.File(tmp_path / targets[0]) as h5:
        brightness = h5["test_brightness"][:]
        record = json.loads(h5.attrs["test_loudness_provenance"])
        assert json.loads(record["params"])["floor"] == 1e-4  # the schema's default reached the job
        assert h5["test_loudness"].shape[1] == 2 and h5["enet"].shape[1] == 10  # the face model beside the set
    assert brightness.max() > 1.0  # doubled by the gain file (a face's mean colour is at most 1)
    metrics = json.loads((tmp_path / targets[2]).read_text())
    assert metrics["baseline"]["stream"] == "enet" and metrics["baseline"]["columns"] == [8, 9]
    assert np.isfinite(metrics["ccc_mean"]) and metrics["n_validation_trials"] > 0
    rows = np.loadtxt(tmp_path / targets[3], delimiter=",", skiprows=1)
    with h5py.File(tmp_path / "results" / "features" / "enet" / f"{test_trial}.h5") as h5:
        np.testing.assert_allclose(rows, h5["features"][:, 8:10], atol=1e-6)  # the network's own columns

    # a weights key the config switches on without a file stops at planning, naming the key
    config["weights"]["brightness_gain"] = None
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0
    assert "weights.brightness_gain: null, but features.test_brightness.use_gain is on" in proc.stdout + proc.stderr
    # and a setting the plug-in's schema does not allow, naming the key
    config["weights"]["brightness_gain"] = str(gain)
    config["features"]["test_loudness"] = {"floor": -1}
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0 and "features.test_loudness.floor" in proc.stdout + proc.stderr


def test_an_installed_package_registers_its_streams_by_entry_point(tmp_path, monkeypatch):
    """The other way in: a package's ``vafusion.streams`` entry point (here a distribution
    written into a folder on sys.path), found with no config key and loaded once."""
    package = tmp_path / "site" / "my_vafusion_streams.py"
    package.parent.mkdir()
    package.write_text(textwrap.dedent('''
        from vafusion.features.registry import Stream, section

        STREAM = Stream("test_ep_stream", "visual", "faces", "my_vafusion_streams", 4, section("test_ep_stream"),
                        "from an entry point",
                        schema={"type": "object", "additionalProperties": False,
                                "properties": {"width": {"description": "w", "type": "integer", "default": 4}}})
    '''))
    info = tmp_path / "site" / "my_vafusion_streams-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-vafusion-streams\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[vafusion.streams]\nmine = my_vafusion_streams:STREAM\n")
    monkeypatch.syspath_prepend(str(package.parent))
    try:
        from conftest import workflow_schema
        from vafusion.schema import validate

        config = copy.deepcopy(CONFIG)
        schema = workflow_schema(config)  # loads the plug-ins, then takes their schemas
        assert registry.get("test_ep_stream").description == "from an entry point"
        validate(config, schema)
        assert config["features"]["test_ep_stream"] == {"width": 4}  # its default, no config.yaml section
        registry.load_plugins(config)  # a second load registers nothing twice
    finally:
        registry.unregister("test_ep_stream")
        registry._PLUGINS.pop("entry point mine", None)
        sys.modules.pop("my_vafusion_streams", None)
