"""The ``vafusion`` command: the device auto picks, and whether a weights file fits."""

from __future__ import annotations

import torch

from test_weights import RunsCode
from vafusion.cli import main
from vafusion.models.vggish import VGGish


def test_device_says_what_auto_picks_and_why(capsys):
    assert main(["device"]) == 0
    assert capsys.readouterr().out.strip() == "auto -> cpu: no NVIDIA GPU driver on this machine"


def test_weights_fit_with_their_sha256_or_fail_clearly(tmp_path, capsys):
    torch.save(VGGish().state_dict(), tmp_path / "vggish.pth")
    assert main(["weights", "vggish", str(tmp_path / "vggish.pth")]) == 0
    from vafusion.weights import sha256sum

    assert capsys.readouterr().out.strip() == (f"vggish: {tmp_path / 'vggish.pth'} fits "
                                               f"(sha256 {sha256sum(tmp_path / 'vggish.pth')})")
    torch.save({"x": RunsCode(tmp_path / "code-ran")}, tmp_path / "evil.pth")
    assert main(["weights", "vggish", str(tmp_path / "evil.pth")]) == 1
    assert "refused because unpickling them could run code" in capsys.readouterr().err
    assert main(["weights", "iresnet50", str(tmp_path / "vggish.pth")]) == 1
    assert "does not fit" in capsys.readouterr().err
