"""Face networks by configuration (vafusion.features.backbones) on real GRID faces: timm
checkpoints the test writes (safetensors, wrapped .pt state dicts) and ONNX files it
exports give the features of a plain torch forward on faces preprocessed here with numpy
(PIL for shrinking); the HSEmotion layout with the recipe's keys; frames without a face;
and every refusal, on its message."""

import copy
import hashlib
import logging
import warnings

import cv2
import h5py
import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from conftest import GRID, REPO, workflow_schema
from vafusion.faces import FaceJpegs, FaceTrackWriter, align_trial_faces
from vafusion.features.backbones import (FaceModelError, FaceModelSpec, extract, preprocess, resolve_spec,
                                         spec_defaults, spec_problems)
from vafusion.features.registry import ExtractJob
from vafusion.schema import ConfigError, validate
from vafusion.weights import WeightsError

CLIP = GRID / "lbax4n.mpg"
# ten frames: two without a face, faces 0-2, two without, face 3, one without, face 4
PATTERN = [None, None, 0, 10, 20, None, None, 30, None, 40]
FOUND = [i for i, k in enumerate(PATTERN) if k is not None]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# float32 end to end on both sides; what differs is the order of operations (channels-last,
# batches, the resize's arithmetic): measured at most 6e-8 (timm) and 2e-7 (ONNX) absolute,
# 1/50 of this tolerance or less
RTOL, ATOL = 1e-4, 1e-5


# --- media and models --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """A faces file of ten frames (PATTERN) cut from the clip's aligned faces, and the
    found faces as OpenCV decodes them (RGB uint8)."""
    folder = tmp_path_factory.mktemp("backbones")
    aligned = folder / "lbax4n.h5"
    align_trial_faces(CLIP, aligned, trial="lbax4n")
    with h5py.File(aligned) as h5:
        jpegs = FaceJpegs(h5)[:]
    path = folder / "gappy.h5"
    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, k in enumerate(PATTERN):
            writer.add(i / 25, None if k is None else jpegs[k])
        writer.flush()
    faces = np.stack([cv2.cvtColor(cv2.imdecode(jpegs[k], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                      for k in PATTERN if k is not None])
    return path, faces


@pytest.fixture(scope="module")
def no_face(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbones") / "none.h5"
    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i in range(4):
            writer.add(i / 25, None)
        writer.flush()
    return path


def timm_model(architecture, num_classes, seed=0):
    """A timm model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


class TinyNet(nn.Module):
    """The HSEmotion layout in small: convolutions, a pooled embedding, a linear head."""

    def __init__(self, outputs=10, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, outputs)

    def forward(self, x):  # (N, 3, H, W) -> (N, outputs)
        return self.classifier(self.features(x))


class FlatNet(nn.Module):
    """A head on the flattened map: it takes only the input size it was made for."""

    def __init__(self, size):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4 * (size // 4) ** 2, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class NhwcNet(TinyNet):
    """TinyNet taking (N, H, W, 3), as TensorFlow exports do."""

    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))


def export_onnx(model, path, size, *, batch=2, dynamic=(0,), input_name="input", output_name="output", nhwc=False):
    torch.manual_seed(1)
    model.eval()
    axes = {input_name: {d: f"d{d}" for d in dynamic}, output_name: {0: "d0"} if 0 in dynamic else {}}
    example = torch.randn(batch, size, size, 3) if nhwc else torch.randn(batch, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: it works offline
        torch.onnx.export(model, (example,), str(path), input_names=[input_name],
                          output_names=[output_name], dynamic_axes=axes or None, opset_version=11, dynamo=False)
    return path


# --- the reference computation ------------------------------------------------------------------

def enlarge(image, size):
    """Bilinear interpolation, pixel centres at half-integers, edges clamped (numpy)."""
    side = image.shape[0]
    src = np.clip((np.arange(size) + 0.5) * side / size - 0.5, 0, side - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, side - 1)
    w = src - lo
    rows = image[lo] * (1 - w)[:, None, None] + image[hi] * w[:, None, None]
    return rows[:, lo] * (1 - w)[None, :, None] + rows[:, hi] * w[None, :, None]


def shrink(image, size):
    """PIL's BILINEAR reduction (a triangle filter widened by the factor), per channel."""
    return np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BILINEAR))
                     for c in range(image.shape[2])], axis=-1).astype(np.float64)


def reference_input(faces, *, input_size, crop=1.0, colour="rgb", scale=255.0, mean=IMAGENET["mean"],
                    std=IMAGENET["std"], **_):
    """(N, 112, 112, 3) uint8 -> (N, 3, S, S) float32, written from the recipe's words."""
    side = round(112 * crop)
    top = (112 - side) // 2
    out = []
    for face in faces.astype(np.float64):
        face = face[top:top + side, top:top + side]
        if side < input_size:
            face = enlarge(face, input_size)
        elif side > input_size:
            face = shrink(face, input_size)
        if colour == "bgr":
            face = face[..., ::-1]
        face = (face / scale - np.array(mean)) / np.array(std)
        out.append(face.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def run(tmp_path, faces, settings, weights, name="face_net", **job):
    out = tmp_path / f"{name}.h5"
    extract(ExtractJob(stream=name, output=str(out), settings=settings, faces=str(faces),
                       weights={name: None if weights is None else str(weights)}, **job))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["face_found"][:], dict(h5.attrs)


def assert_carried(features, width):
    """Frames without a face hold the last face's row; the leading gap the first face's."""
    assert features.shape == (len(PATTERN), width)
    np.testing.assert_allclose(features[[0, 1]], features[[2, 2]], rtol=RTOL, atol=ATOL)  # one face vs a batch
    np.testing.assert_array_equal(features[[5, 6, 8]], features[[4, 4, 7]])
    for a, b in zip(FOUND, FOUND[1:]):  # different faces are told apart at this tolerance: the checks can fail
        assert not np.allclose(features[a], features[b], rtol=RTOL, atol=ATOL)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- preprocessing -----------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    {"input_size": 160, "crop": 0.75, "colour": "bgr", "scale": 127.5, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2]},
    {"input_size": 64, "crop": 0.9, "colour": "rgb", "scale": 1.0, "mean": [100, 110, 120], "std": [60, 50, 70]},
    {"input_size": 112, "crop": 1.0, "colour": "bgr", "scale": 255.0, **IMAGENET},
], ids=["enlarge-bgr", "shrink-antialias", "no-resize"])
def test_preprocessing_matches_numpy(gappy, settings):
    _, faces = gappy
    spec = FaceModelSpec(**{**spec_defaults(), "kind": "onnx", "weights": None, **settings,
                            "mean": tuple(settings["mean"]), "std": tuple(settings["std"])})
    got = preprocess(torch.from_numpy(faces), spec).numpy()
    want = reference_input(faces, **settings)
    assert got.shape == want.shape == (len(faces), 3, settings["input_size"], settings["input_size"])
    assert got.dtype == np.float32
    # resizes agree to ~1e-3 grey levels (PIL's float filter vs torch's), i.e. 1e-3 / scale / std here
    tolerance = 2e-3 / settings["scale"] / min(settings["std"]) + 1e-5
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)


# --- timm --------------------------------------------------------------------------------------

def test_timm_pooled_features_equal_a_torch_forward(gappy, tmp_path):
    """A safetensors checkpoint of another class count than timm's default (7): `pooled`
    gives the classifier's input, as timm's forward_head(pre_logits=True) does on the
    numpy-preprocessed faces; frames without a face carry the last face's row."""
    faces_path, faces = gappy
    model = timm_model("test_efficientnet", 7)
    weights = tmp_path / "enet.safetensors"
    save_file(model.state_dict(), str(weights))
    settings = {"kind": "timm", "architecture": "test_efficientnet", "input_size": 96, "crop": 0.875,
                "colour": "bgr", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25], "batch_size": 3}
    features, found, attrs = run(tmp_path, faces_path, settings, weights)

    with torch.no_grad():
        want = model.forward_head(model.forward_features(torch.from_numpy(reference_input(faces, **settings))),
                                  pre_logits=True).numpy()
    assert want.shape == (len(FOUND), model.num_features)
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)
    assert_carried(features, model.num_features)
    np.testing.assert_array_equal(found, [k is not None for k in PATTERN])
    assert (attrs["kind"], attrs["architecture"], attrs["output"]) == ("timm", "test_efficientnet", "pooled")
    assert attrs["output_width"] == model.num_features
    assert attrs["weights_sha256"] == sha256(weights) and attrs["timm_version"] == timm.__version__
    assert "centre 98x98" in attrs["preprocessing"] and "BGR" in attrs["preprocessing"]
    assert "7 classes in the file, not used" in attrs["params"]


def test_timm_logits_from_a_wrapped_pt_state_dict(gappy, tmp_path):
    """{"state_dict": {"module.<key>": ...}} (a DataParallel training checkpoint) loads;
    `logits` is the checkpoint's own 5-class head."""
    faces_path, faces = gappy
    model = timm_model("test_resnet", 5)
    weights = tmp_path / "resnet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, weights)
    settings = {"kind": "timm", "architecture": "test_resnet", "input_size": 80, "output": "logits", **IMAGENET}
    features, _, attrs = run(tmp_path, faces_path, settings, weights)
    with torch.no_grad():
        want = model(torch.from_numpy(reference_input(faces, **settings))).numpy()
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)
    assert features.shape == (len(PATTERN), 5) and attrs["output"] == "logits"


@pytest.mark.parametrize("architecture, module, pool", [
    ("test_resnet", "layer2", (2, 3)),  # (N, C, H, W): over H and W
    ("test_vit", "blocks.0", (1,)),  # (N, tokens, C): over the tokens
])
def test_timm_module_output_is_average_pooled(gappy, tmp_path, architecture, module, pool):
    faces_path, faces = gappy
    model = timm_model(architecture, 3)
    weights = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(weights))
    settings = {"kind": "timm", "architecture": architecture, "input_size": 160, "output": module}
    features, _, _ = run(tmp_path, faces_path, settings, weights)
    seen = []
    handle = dict(model.named_modules())[module].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(torch.from_numpy(reference_input(faces, **settings)))
    handle.remove()
    want = seen[0].mean(dim=pool).numpy()
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)


def test_trial_without_faces_gives_zeros(no_face, tmp_path):
    model = timm_model("test_resnet", 2)
    weights = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(weights))
    features, found, _ = run(tmp_path, no_face, {"kind": "timm", "architecture": "test_resnet", "input_size": 64},
                             weights)
    assert features.shape == (4, model.num_features) and not features.any() and not found.any()


# --- ONNX --------------------------------------------------------------------------------------

def test_onnx_features_equal_the_torch_forward(gappy, tmp_path):
    """An exported network (dynamic batch) under onnxruntime, 2 threads, batches of 3 frames."""
    faces_path, faces = gappy
    net = TinyNet(outputs=6)
    path = export_onnx(net, tmp_path / "tiny.onnx", 64)
    settings = {"kind": "onnx", "input_size": 64, "crop": 0.8, "batch_size": 3}
    features, _, attrs = run(tmp_path, faces_path, settings, path, threads=2)
    with torch.no_grad():
        want = net(torch.from_numpy(reference_input(faces, **settings))).numpy()
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)
    assert_carried(features, 6)
    assert attrs["onnxruntime_version"] and attrs["output"] == "output" and attrs["weights_sha256"] == sha256(path)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_onnx_with_a_fixed_batch_or_channels_last(gappy, tmp_path, nhwc):
    """A model exported for exactly 2 faces gets whole batches (5 faces: 2 + 2 + 1 padded);
    one whose input is (N, H, W, 3) gets its faces so."""
    faces_path, faces = gappy
    net = NhwcNet(outputs=4) if nhwc else TinyNet(outputs=4)
    path = export_onnx(net, tmp_path / "fixed.onnx", 48, batch=2, dynamic=(), nhwc=nhwc)
    settings = {"kind": "onnx", "input_size": 48}
    features, _, attrs = run(tmp_path, faces_path, settings, path)
    with torch.no_grad():
        want = TinyNet.forward(net, torch.from_numpy(reference_input(faces, **settings))).numpy()
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)
    assert '"onnx_fixed_batch": 2' in attrs["params"]
    assert f'"onnx_input_layout": "{"NHWC" if nhwc else "NCHW"}"' in attrs["params"]


def hsemotion_stand_in(tmp_path):
    """HSEmotion's ONNX layout (its src/convert_pt_to_onnx.py): input 'input' (N, 3, 224,
    224), output 'output' of 8 expression logits + valence + arousal, dynamic batch."""
    net = TinyNet(outputs=10)
    return net, export_onnx(net, tmp_path / "enet_b0_8_va_mtl.onnx", 224)


RECIPE = {"kind": "onnx", "input_size": 224, "crop": 1.0, "colour": "rgb", "scale": 255.0, **IMAGENET,
          "input": "input", "output": "output", "valence_arousal": [8, 9], "batch_size": 32}


def test_hsemotion_layout_with_the_recipe(gappy, tmp_path):
    import onnx

    faces_path, faces = gappy
    net, path = hsemotion_stand_in(tmp_path)
    features, _, attrs = run(tmp_path, faces_path, RECIPE, path, name="enet_va")
    x = torch.from_numpy(reference_input(faces, **RECIPE))
    with torch.no_grad():
        want, embedding = net(x).numpy(), net.features(x).numpy()
    np.testing.assert_allclose(features[FOUND], want, rtol=RTOL, atol=ATOL)
    assert features.shape == (len(PATTERN), 10)
    assert list(attrs["valence_arousal_columns"]) == [8, 9] and attrs["face_model"] == "enet_va"

    # the classifier's input, an inner tensor of the graph, named as the output: the embedding
    gemm = onnx.load(str(path)).graph.node[-1]
    assert gemm.op_type == "Gemm"
    inner, _, attrs = run(tmp_path, faces_path, {**RECIPE, "output": gemm.input[0], "valence_arousal": None}, path)
    np.testing.assert_allclose(inner[FOUND], embedding, rtol=RTOL, atol=ATOL)
    assert attrs["output_width"] == 16 and '"onnx_output_inner": true' in attrs["params"]


# --- refusals ----------------------------------------------------------------------------------

def refusal(tmp_path, faces, settings, weights, error=FaceModelError, name="face_net"):
    with pytest.raises(error) as caught:
        run(tmp_path, faces, settings, weights, name=name)
    return str(caught.value)


def schema_refusal(name, entry):
    """The workflow's refusal of ``features.face_models.<name>: entry``: its config schema's,
    before spec_problems runs (types, enums, bounds, unknown keys)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["features"]["face_models"] = {name: copy.deepcopy(entry)}
    with pytest.raises(ConfigError) as caught:
        validate(config, workflow_schema(config))
    return str(caught.value)


def test_no_weights_is_refused(gappy, tmp_path):
    faces_path, _ = gappy
    message = refusal(tmp_path, faces_path, {"kind": "onnx"}, None, WeightsError, name="enet_va")
    assert "features.face_models.enet_va.weights: not set" in message
    assert any("features.face_models.enet_va.weights: not set" in p for p in spec_problems("enet_va", {"kind": "onnx"}))
    assert not (tmp_path / "enet_va.h5").exists()


def test_unknown_architecture_suggests_close_names(gappy, tmp_path):
    problems = spec_problems("m", {"kind": "timm", "architecture": "efficientnet-b0", "weights": __file__})
    assert len(problems) == 1 and problems[0].startswith("features.face_models.m.architecture: timm")
    assert "no model 'efficientnet-b0'" in problems[0] and "efficientnet_b0" in problems[0].split("close names:")[1]
    assert "no pretrained tag 'nope'" in spec_problems("m", {"kind": "timm", "architecture": "efficientnet_b0.nope",
                                                             "weights": __file__})[0]
    message = refusal(tmp_path, gappy[0], {"kind": "timm", "architecture": "efficientnet-b0"}, __file__)
    assert "features.face_models.face_net.architecture" in message


def test_checkpoint_that_does_not_fit_names_keys_and_counts(gappy, tmp_path):
    state = timm_model("test_efficientnet", 7).state_dict()
    state.pop("conv_head.weight"), state.pop("bn2.weight")
    state["extra.weight"] = torch.zeros(2)
    state["conv_stem.weight"] = torch.zeros(8, 3, 5, 5)
    weights = tmp_path / "bad.safetensors"
    save_file(state, str(weights))
    message = refusal(tmp_path, gappy[0], {"kind": "timm", "architecture": "test_efficientnet", "input_size": 64},
                      weights, WeightsError)
    assert message.startswith("features.face_models.face_net.weights:") and "test_efficientnet" in message
    assert "2 missing keys (bn2.weight, conv_head.weight)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "1 wrong shapes (conv_stem.weight: file (8, 3, 5, 5), network" in message

    wrapped = tmp_path / "wrapped.safetensors"  # a model wrapped in another module
    save_file({f"backbone.{k}": v for k, v in timm_model("test_resnet", 2).state_dict().items()}, str(wrapped))
    message = refusal(tmp_path, gappy[0], {"kind": "timm", "architecture": "test_resnet", "input_size": 64}, wrapped,
                      WeightsError)
    assert "All the file's keys start with 'backbone.'" in message


def test_logits_need_the_classifier_and_pickles_are_refused(gappy, tmp_path):
    model = timm_model("test_resnet", 3)
    headless = tmp_path / "headless.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, headless)
    settings = {"kind": "timm", "architecture": "test_resnet", "input_size": 64}
    message = refusal(tmp_path, gappy[0], {**settings, "output": "logits"}, headless, WeightsError)
    assert "features.face_models.face_net.output: logits needs the classifier's weights (fc.weight)" in message
    features, _, _ = run(tmp_path, gappy[0], settings, headless)  # pooled needs no classifier
    assert features.shape == (len(PATTERN), model.num_features)

    pickled = tmp_path / "whole_model.pt"
    torch.save(model, pickled)  # the whole module: loading it would run pickled code
    message = refusal(tmp_path, gappy[0], settings, pickled, WeightsError)
    assert "unpickling them could run code" in message and "features.face_models.face_net.weights" in message

    message = refusal(tmp_path, gappy[0], {**settings, "output": "layer9"}, headless)
    assert "no module 'layer9'" in message and "layer4" in message


def test_onnx_names_that_do_not_exist_list_the_existing_ones(gappy, tmp_path):
    _, path = hsemotion_stand_in(tmp_path)
    message = refusal(tmp_path, gappy[0], {**RECIPE, "input": "image"}, path)
    assert message.startswith("features.face_models.face_net.input: ") and "no input 'image'" in message
    assert "'input' [d0, 3, 224, 224] tensor(float)" in message
    message = refusal(tmp_path, gappy[0], {**RECIPE, "output": "embedding"}, path)
    assert message.startswith("features.face_models.face_net.output: ") and "its outputs: 'output'" in message
    assert "the last node (Gemm) is fed by" in message
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"\x08\x07 not a model")
    message = refusal(tmp_path, gappy[0], RECIPE, not_onnx, WeightsError)
    assert message.startswith("features.face_models.face_net.weights: ")
    assert "cannot be loaded by onnxruntime" in message


def test_input_size_the_model_rejects(gappy, tmp_path):
    _, path = hsemotion_stand_in(tmp_path)  # fixed 224x224 in the ONNX input's shape
    message = refusal(tmp_path, gappy[0], {**RECIPE, "input_size": 112}, path)
    assert "face_net.input_size: " in message and "takes 224x224 pixels" in message and "input_size: 224" in message

    flat = export_onnx(FlatNet(64), tmp_path / "flat.onnx", 64, dynamic=(0, 2, 3))  # says any size, takes one
    message = refusal(tmp_path, gappy[0], {"kind": "onnx", "input_size": 96}, flat)
    assert "face_net.input_size: " in message and "failed on a 96x96 input" in message

    vit = tmp_path / "vit.safetensors"
    save_file(timm_model("test_vit3", 2).state_dict(), str(vit))
    message = refusal(tmp_path, gappy[0], {"kind": "timm", "architecture": "test_vit3", "input_size": 112}, vit)
    assert "face_net.input_size: timm's test_vit3 rejected a 112x112 input" in message and "160x160" in message


def test_valence_arousal_outside_the_output(gappy, tmp_path):
    _, path = hsemotion_stand_in(tmp_path)
    message = refusal(tmp_path, gappy[0], {**RECIPE, "valence_arousal": [8, 10]}, path)
    assert "face_net.valence_arousal: columns [8, 10]" in message and "which has 10 (columns 0..9)" in message
    assert [p.split(":")[0] for p in spec_problems("m", {**RECIPE, "weights": str(path), "valence_arousal": [3, 3]})
            ] == ["features.face_models.m.valence_arousal"]
    for bad in ([8], [-1, 2], "8,9"):  # the schema's refusals
        assert schema_refusal("m", {**RECIPE, "weights": str(path), "valence_arousal": bad}).startswith(
            "config key features.face_models.m.valence_arousal")


def test_spec_problems_name_each_key(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    assert spec_problems("enet_va", {**RECIPE, "weights": str(onnx_file)}) == []
    timm_entry = {"kind": "timm", "architecture": "test_resnet", "weights": str(onnx_file)}
    problems = spec_problems("m", {**timm_entry, "input": "x", "input_size": 5000, "output": " ",
                                   "scale": float("inf"), "mean": [0.5, float("nan"), 0.5]})
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == [f"features.face_models.m.{k}"
                    for k in ("input", "input_size", "mean", "output", "scale", "weights")]
    assert "set features.face_models.m.kind: onnx" in " ".join(problems)
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"")
    problems = spec_problems("m", {"kind": "onnx", "weights": str(pt), "architecture": "test_resnet"})
    assert any("set features.face_models.m.kind: timm" in p for p in problems)
    assert any(p.startswith("features.face_models.m.architecture: unused for an ONNX model") for p in problems)

    # what the schema refuses, before spec_problems runs: each named by its key
    for bad, said in (({"crop": 1.5}, "m.crop: 1.5 is greater than the maximum of 1"),
                      ({"colour": "grey"}, "m.colour: 'grey' is not one of"), ({"scale": 0}, "m.scale: 0"),
                      ({"mean": [0.5]}, "m.mean: [0.5] is too short"), ({"std": [1, 0, 1]}, "m.std.1: 0"),
                      ({"batch_size": 0}, "m.batch_size: 0"), ({"input_size": 2}, "m.input_size: 2"),
                      ({"kind": "tflite"}, "m.kind: 'tflite' is not one of"),
                      ({"colr": "bgr"}, "m: Additional properties are not allowed ('colr' was unexpected)")):
        assert schema_refusal("m", {**timm_entry, **bad}).startswith(f"config key features.face_models.{said}")
    assert schema_refusal("m", {"weights": str(onnx_file)}) == \
        "config key features.face_models.m: 'kind' is a required property"
    assert schema_refusal("bad name", {"kind": "onnx", "weights": str(onnx_file)}).startswith(
        "config key features.face_models: 'bad name' does not match")


def test_resolve_spec_takes_the_schemas_defaults(tmp_path):
    """A direct caller's entry: the schema's defaults filled in (the values this module
    always had); the keys the schema requires or does not know refused, then spec_problems'."""
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    assert resolve_spec("m", {"kind": "onnx", "weights": onnx_file}) == FaceModelSpec(
        kind="onnx", weights=str(onnx_file), architecture=None, input_size=224, crop=1.0, colour="rgb", scale=255.0,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input=None, output=None, valence_arousal=None,
        batch_size=32)
    assert set(spec_defaults()) == set(FaceModelSpec.__dataclass_fields__) - {"kind", "weights"}
    with pytest.raises(FaceModelError, match=r"^features.face_models.m.kind: not set \(it has no default\)$"):
        resolve_spec("m", {"weights": str(onnx_file)})
    with pytest.raises(FaceModelError, match=r"^features.face_models.m.colr: unknown key \(did you mean colour\?\)$"):
        resolve_spec("m", {"kind": "onnx", "weights": str(onnx_file), "colr": "bgr"})
    with pytest.raises(FaceModelError, match=r"^features.face_models.m.weights: '.*m.pt' does not exist"):
        resolve_spec("m", {"kind": "timm", "architecture": "test_resnet", "weights": str(tmp_path / "m.pt")})


def test_a_timm_entry_warns_where_it_differs_from_timms_configuration(gappy, tmp_path, caplog):
    weights = tmp_path / "m.safetensors"
    save_file(timm_model("test_resnet", 2).state_dict(), str(weights))
    with caplog.at_level(logging.WARNING):
        run(tmp_path, gappy[0], {"kind": "timm", "architecture": "test_resnet", "input_size": 64, **IMAGENET}, weights)
    assert "mean [0.485, 0.456, 0.406] (timm: [0.5, 0.5, 0.5])" in caplog.text
    assert "input_size 64 (timm: 160)" in caplog.text
