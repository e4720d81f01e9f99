"""Network layouts against the published checkpoints' key names and shapes, and what a
bad checkpoint does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from vafusion.learning.predict import load_model
from vafusion.models.iresnet import iresnet50
from vafusion.models.vggish import VGGish, VGGishPCA
from vafusion.weights import RANDOM_INIT, WeightsError, load_weights, read_state_dict, sha256sum

# torchvggish's vggish-10086976.pth, as published.
VGGISH_LAYOUT = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


def bn(prefix, n):
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {f"{prefix}.num_batches_tracked": ()}


def arcface_iresnet50_layout():
    """arcface_torch iresnet50 state dict: blocks 3-4-14-3, stride 2 on every stage."""
    layout = {"conv1.weight": (64, 3, 3, 3), **bn("bn1", 64), "prelu.weight": (64,)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 14, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layout |= bn(f"{p}.bn1", inplanes)
            layout[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            layout |= bn(f"{p}.bn2", planes)
            layout[f"{p}.prelu.weight"] = (planes,)
            layout[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            layout |= bn(f"{p}.bn3", planes)
            if b == 0:
                layout[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                layout |= bn(f"{p}.downsample.1", planes)
            inplanes = planes
    layout |= bn("bn2", 512)
    layout |= {"fc.weight": (512, 25088), "fc.bias": (512,)}
    layout |= bn("features", 512)
    return layout


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_vggish_matches_torchvggish_checkpoint_layout():
    assert shapes(VGGish()) == VGGISH_LAYOUT
    assert shapes(VGGish(final_relu=False)) == VGGISH_LAYOUT
    assert sum(p.numel() for p in VGGish().parameters()) == 72_141_184
    assert set(shapes(VGGishPCA())) == {"pca_eigen_vectors", "pca_means"}


def test_iresnet50_matches_arcface_torch_layout():
    layout = arcface_iresnet50_layout()
    assert len(layout) == 475
    assert shapes(iresnet50()) == layout
    assert sum(p.numel() for p in iresnet50().parameters()) == 43_590_848
    assert iresnet50().eval()(torch.zeros(2, 3, 112, 112)).shape == (2, 512)


def test_vggish_flattens_channels_last_like_tensorflow():
    """The first linear layer must see the (time, mel, channel) order the weights expect."""
    model = VGGish().eval()
    conv_out = model.features(torch.randn(1, 1, 96, 64))
    expected = conv_out.permute(0, 2, 3, 1).reshape(1, -1)  # NHWC flatten
    captured = {}
    model.embeddings[0].register_forward_pre_hook(lambda module, args: captured.update(x=args[0].clone()))
    model.features = torch.nn.Identity()
    model(conv_out)
    torch.testing.assert_close(captured["x"], expected)


def test_checkpoint_round_trip_records_sha256(tmp_path):
    source = iresnet50().eval()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    target = iresnet50().eval()
    info = load_weights(target, path, what="iresnet50")
    assert info["weights"] == str(path) and info["weights_sha256"] == sha256sum(path)
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        torch.testing.assert_close(source(x), target(x))


def test_wrapped_and_dataparallel_checkpoints_load(tmp_path):
    state = {f"module.{k}": v for k, v in VGGish().state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    load_weights(VGGish(), tmp_path / "w.pth", what="vggish")


def test_pca_file_with_numpy_arrays_loads(tmp_path):
    """torchvggish's PCA file holds numpy arrays, not tensors."""
    torch.save({"pca_eigen_vectors": np.eye(128) * 2, "pca_means": np.ones(128)}, tmp_path / "pca.pth")
    state = read_state_dict(tmp_path / "pca.pth", "vggish_pca")
    assert state["pca_eigen_vectors"].shape == (128, 128)


def test_random_init_is_seeded_and_says_so(caplog):
    a, b = VGGish(), VGGish()
    info = load_weights(a, None, what="vggish", seed=3)
    load_weights(b, None, what="vggish", seed=3)
    assert info["weights"] == RANDOM_INIT
    assert "NO PRETRAINED WEIGHTS for vggish" in caplog.text and "RANDOM" in caplog.text
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb)


def test_missing_corrupt_and_misfitting_checkpoints(tmp_path):
    with pytest.raises(WeightsError, match="'.*nope.pth' does not exist"):
        load_weights(VGGish(), tmp_path / "nope.pth", what="vggish")

    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match="corrupt.pth' cannot be read"):
        load_weights(VGGish(), tmp_path / "corrupt.pth", what="vggish")

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_weights(VGGish(), tmp_path / "list.pth", what="vggish")

    state = VGGish().state_dict()
    state["features.99.weight"] = state.pop("features.13.weight")  # renamed key
    state["embeddings.4.weight"] = torch.zeros(64, 4096)  # wrong shape
    torch.save(state, tmp_path / "misfit.pth")
    with pytest.raises(WeightsError) as err:
        load_weights(VGGish(), tmp_path / "misfit.pth", what="vggish")
    msg = str(err.value)
    assert "misfit.pth' does not fit the VGGish architecture" in msg
    assert "missing keys (1): features.13.weight" in msg
    assert "unexpected keys (1): features.99.weight" in msg
    assert "embeddings.4.weight: file (64, 4096), network (128, 4096)" in msg

    # the face network's checkpoint in place of the audio network's
    torch.save(iresnet50().state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(WeightsError, match=r"missing keys \(18\)") as err:
        load_weights(VGGish(), tmp_path / "backbone.pth", what="vggish")
    assert "(475 in all)" in str(err.value)


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    state = VGGish().state_dict()
    state["features.0.weight"] = RunsCode(marker)
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth' holds Python objects other than tensors") as err:
        load_weights(VGGish(), tmp_path / "evil.pth", what="vggish")
    assert "system" in str(err.value)  # names what the file wanted to call
    assert not marker.exists()
    # the pipeline's own checkpoints are read the same way
    torch.save({"model_name": "ca", "state_dict": {}, "extra": RunsCode(marker)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt: refused"):
        load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert not marker.exists()
