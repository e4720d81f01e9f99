"""Shared fixtures: small real media made with the real ffmpeg, and helpers that run the
real Snakemake workflow on the demo dataset."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vafusion.video import ffmpeg_binary

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "data" / "grid"
TEST_DATA = REPO / "tests" / "data"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def workflow_schema(config: dict) -> dict:
    """The schema the Snakefile validates ``config`` against (the file + the registry's streams)."""
    from vafusion.schema import config_schema

    return config_schema(REPO / "workflow" / "schemas" / "config.schema.yaml", config)


def write_faces(path: Path, jpegs: list, fps: int = 25) -> Path:
    """A trial's faces file (``FaceTrackWriter``): one frame per entry, None = no face found."""
    import h5py

    from vafusion.faces import FaceTrackWriter

    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for i, jpeg in enumerate(jpegs):
            writer.add(i / fps, jpeg)
        writer.flush()
    return path


def make_video(path: Path, *, seconds: float = 1.0, fps: int = 25, audio: bool = True,
               size: str = "64x48", vcodec: str = "libx264") -> Path:
    """A synthetic test-pattern video (with a 440 Hz tone when ``audio``)."""
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    cmd += ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac"] if audio else ["-an"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.fixture
def video_factory(tmp_path):
    def factory(name: str = "clip.mp4", **kwargs) -> Path:
        return make_video(tmp_path / name, **kwargs)

    return factory


def snakemake_command(workdir: Path, *args: str, snakefile: str = "Snakefile") -> list[str]:
    return SNAKEMAKE + ["-s", str(REPO / snakefile), "--directory", str(workdir), *args]


def check_run(cmd: list[str], returncode: int, stdout: str, stderr: str) -> None:
    if returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}")


def snakemake(workdir: Path, *args: str, snakefile: str = "Snakefile", check: bool = True):
    """Run snakemake from the repository (its workflow profile applies) in ``workdir``."""
    cmd = snakemake_command(workdir, *args, snakefile=snakefile)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if check:
        check_run(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


def data_section(dataset: Path) -> dict:
    """The config's data section for a dataset in the demo's layout."""
    return {
        "videos": str(dataset / "videos"),
        "annotations": {"train": str(dataset / "annotations" / "train"),
                        "validation": str(dataset / "annotations" / "validation")},
        "cropped_aligned": str(dataset / "cropped_aligned"),
        "test_trials": str(dataset / "test_trials.txt"),
    }


# Test runs train three models and one experiment for a few epochs on three folds (the full default list and
# six folds are `make run`'s): Yu et al.'s on both stream sets (the default, and the
# pretrained set without its slowest stream, dlib's face descriptor at ~9 faces/s, which
# its own tests cover) and the recursive JCA with IACA (the BLSTM and gate paths); three
# shares of dropped audio, all three patterns (unvoiced: by silero-vad's speech presence).
TEST_LEARNING = {"models": ["tcn_transformer", "rjca_iaca", "tcn_transformer@pretrained"], "max_epochs": 3, "n_folds": 3,
                 "pretrained": {"audio": ["egemaps"], "visual": ["landmarks"]},
                 "missing_audio": {"shares": [0.0, 0.4, 0.8], "patterns": ["contiguous", "scattered", "unvoiced"],
                                   "fill": "zeros"},
                 # an ablation (Yu et al.'s model with another learning rate) and an ensemble whose
                 # weights come from the members' other folds
                 "experiments": {"tcn_lr2x": {"model": "tcn_transformer", "overrides": {"train": {"lr": 0.002}}}},
                 "ensembles": {"late_fusion": {"members": ["tcn_transformer", "rjca_iaca"], "weights": "ccc"}}}


def write_config(workdir: Path, dataset: Path, output: str = "results", **changes) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"] = data_section(dataset)
    config["output"] = output
    config["learning"]["models"] = TEST_LEARNING["models"]
    config["learning"]["stream_sets"]["pretrained"] = TEST_LEARNING["pretrained"]
    config["learning"]["n_folds"] = TEST_LEARNING["n_folds"]
    config["learning"]["train"]["max_epochs"] = TEST_LEARNING["max_epochs"]
    config["learning"]["train"]["missing_audio"] = TEST_LEARNING["missing_audio"]
    config["learning"]["experiments"] = TEST_LEARNING["experiments"]
    config["learning"]["ensembles"] = TEST_LEARNING["ensembles"]
    config.update(changes)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


_JOB = re.compile(r"^(?:local)?rule (\w+):$")


def planned_jobs(workdir: Path, config: dict) -> set[str]:
    """The jobs `snakemake -n` plans for ``config``, as "rule[wildcards]" (or "rule")."""
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, "--configfile", str(path), "-n")
    jobs, rule, wildcards = set(), None, ""
    for line in (proc.stdout + proc.stderr).splitlines() + [""]:
        match = _JOB.match(line)
        if match or not line.strip():
            if rule:
                jobs.add(f"{rule}[{wildcards}]" if wildcards else rule)
            rule, wildcards = (match.group(1), "") if match else (None, "")
        elif rule and line.strip().startswith("wildcards: "):
            wildcards = line.strip()[len("wildcards: "):]
    return jobs


def jobs_of(rule: str, key: str, values) -> set[str]:
    """The planned-job names of ``rule`` for each value of its wildcard ``key``."""
    return {f"{rule}[{key}={value}]" for value in values}


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """The demo dataset, built by the workflow's own rule, in a folder with spaces."""
    workdir = tmp_path_factory.mktemp("e2e") / "work dir"
    workdir.mkdir()
    snakemake(workdir, "--cores", "1", snakefile="workflow/demo.smk")
    return workdir / "resources" / "demo"


@pytest.fixture(scope="session")
def demo_run(demo_dataset) -> tuple[Path, dict]:
    """One complete run of the workflow on the demo dataset: (results folder, config)."""
    workdir = demo_dataset.parents[1]
    config = write_config(workdir, demo_dataset)
    snakemake(workdir, "--configfile", str(config), "--cores", "2")
    return workdir / "results", yaml.safe_load(config.read_text())
