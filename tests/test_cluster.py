"""The workflow on a real single-node SLURM cluster, through `--profile profiles/slurm`.

SLURM (Debian's slurm-wlm + munge) is installed when missing and started for this module
only; the test is skipped, with the reason, only where that cannot be done (no root, no
apt, or a machine with its own SLURM setup), and fails instead where VAFUSION_REQUIRE_SLURM
is set (CI, `.ci/run`). The cluster run uses a 6-trial subset of the
demo (every kind of trial: two-person video, .avi, detected faces, no audio track) so the
DAG stays small: every level costs several seconds of status polling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, check_run, data_section, snakemake, snakemake_command, write_config
from slurm_cluster import GRES_CONF, SLURM_CONF, SlurmCluster, SlurmUnavailable
from vafusion.dataset import discover
from vafusion.weights import safe_load

pytestmark = pytest.mark.e2e

SUBSET = {
    "train": ["duo_sbia1a_sbwe5n_left", "duo_sbia1a_sbwe5n_right", "grid_lbbc2a", "grid_pwij3p"],
    "validation": ["grid_swwp2s"],
    "test": ["grid_brbk7n_silent"],
}
LOCAL_RULES = {"read_annotation", "align_trial", "make_folds", "plot_model", "plot_gates", "plot_missing_audio",
               "report"}  # the Snakefile's localrules
NETWORK_RULES = ("extract_vggish", "extract_iresnet50", "fill_vggish", "train_model", "predict_test")


def make_subset(demo: Path, target: Path) -> Path:
    """A copy of the demo dataset restricted to ``SUBSET`` (same layout, same files)."""
    ds = discover(data_section(demo))
    for partition in ("train", "validation"):
        (target / "annotations" / partition).mkdir(parents=True)
    (target / "cropped_aligned").mkdir()
    for trial_name in sum(SUBSET.values(), []):
        trial = ds.trials[trial_name]
        video = ds.videos[trial.video]
        copy = target / video.relative_to(demo)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, copy)
        if trial.annotation is not None:
            shutil.copyfile(trial.annotation, target / "annotations" / trial.partition / trial.annotation.name)
        if trial.cropped_aligned is not None:
            shutil.copytree(trial.cropped_aligned, target / "cropped_aligned" / trial_name)
    (target / "test_trials.txt").write_text("\n".join(SUBSET["test"]) + "\n")
    return target


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
    except SlurmUnavailable as err:
        slurm.stop()
        if os.environ.get("VAFUSION_REQUIRE_SLURM"):  # CI: the cluster test runs or fails, never skips
            pytest.fail(f"VAFUSION_REQUIRE_SLURM is set but no SLURM cluster could be started: {err}")
        pytest.skip(f"no SLURM cluster on this machine: {err}")
    except BaseException:
        slurm.stop()
        raise
    yield slurm
    slurm.stop()


def output_files(results: Path) -> list[Path]:
    return sorted(p.relative_to(results) for p in results.rglob("*")
                  if p.is_file() and "logs" not in p.parts)


TIMING = {"seconds", "windows_per_s"}


def without_timing_columns(history: Path) -> list[list[str]]:
    rows = [line.split(",") for line in history.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING]
    return [[row[i] for i in keep] for row in rows]


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path) as h5:
        h5.visititems(lambda name, obj: arrays.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def assert_same_h5(a: Path, b: Path) -> None:
    ours, theirs = h5_arrays(a), h5_arrays(b)
    assert sorted(ours) == sorted(theirs), a
    for key, value in ours.items():
        np.testing.assert_array_equal(value, theirs[key], err_msg=f"{a}:{key}")


def test_demo_runs_on_slurm_and_matches_a_local_run(cluster, demo_dataset, tmp_path):
    dataset = make_subset(demo_dataset, tmp_path / "subset")
    # one model, two folds, two epochs: the same config for both runs
    config = yaml.safe_load(write_config(tmp_path, dataset).read_text())
    config["learning"].update(models=["ca"], n_folds=2, experiments={}, ensembles={})
    config["learning"]["train"]["max_epochs"] = 2
    # the subset's fold 1 trains on a single video: none can be held out for an inner split
    config["learning"]["train"]["selection"] = "validation"
    config["learning"]["train"]["missing_audio"] = {"shares": [0.0, 0.4], "patterns": ["contiguous"], "fill": "zeros"}
    runs = {}
    for name in ("local", "slurm"):
        workdir = tmp_path / name
        workdir.mkdir()
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        runs[name] = (workdir, config_path)

    # The local reference run goes alongside the SLURM run, which mostly waits on its status
    # polls; the outputs are compared bit for bit, so sharing the cores changes no result.
    start = time.monotonic()
    local_cmd = snakemake_command(runs["local"][0], "--configfile", str(runs["local"][1]), "--cores", "2")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        local = subprocess.Popen(local_cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        try:
            proc = snakemake(runs["slurm"][0], "--configfile", str(runs["slurm"][1]), "--profile", "profiles/slurm",
                             "--slurm-init-seconds-before-status-checks", "5", "--slurm-keep-successful-logs")
            slurm_s = time.monotonic() - start
            local.wait()
        finally:
            local.kill()
            local.wait()
        out.seek(0), err.seek(0)
        check_run(local_cmd, local.returncode, out.read(), err.read())
    output = proc.stdout + proc.stderr
    print(f"SLURM run {slurm_s:.0f} s (a local run alongside)")

    # every job except the local ones (tiny rules and the final target) went through
    # sbatch, and slurmctld knows each id
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output))
    planned = int(re.search(r"^total\s+(\d+)", output, re.M).group(1))
    local_jobs = re.findall(r"^localrule (\w+):", output, re.M)
    assert set(local_jobs) == LOCAL_RULES - {"plot_gates"} | {"all"}  # plot_gates: IACA models only
    print(f"{planned} jobs: {len(submitted)} submitted to SLURM, {len(local_jobs)} local")
    assert len(submitted) == planned - len(local_jobs) and len(set(submitted.values())) == len(submitted)
    assert set(submitted.values()) <= cluster.job_ids()
    slurm_logs = list((runs["slurm"][0] / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in slurm_logs} == set(submitted.values())

    # slurmctld's own records: every network job asked SLURM for one GPU and was allocated
    # one (recorded by the controller's prolog at allocation), no other job asked for or got one
    requests, allocated = cluster.job_requests(), cluster.job_gpus()
    for slurm_id in submitted.values():
        comment, asked = requests[slurm_id]
        rule = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment).group(1)
        assert (asked == "gres:gpu:1") == (rule in NETWORK_RULES), (slurm_id, comment, asked)
        assert asked in ("gres:gpu:1", "N/A"), (slurm_id, comment, asked)
        gpus = re.fullmatch(r"gpu:1\(IDX:[01]\)", allocated[slurm_id]) if rule in NETWORK_RULES else None
        assert gpus or (rule not in NETWORK_RULES and allocated[slurm_id] == "none"), (slurm_id, comment, allocated)

    # GPU rules asked for a GPU and got one of the (fake) GPUs; the others got none
    results = runs["slurm"][0] / "results"
    gpu_rules_seen = set()
    for log in (results / "logs").rglob("*.log"):
        visible = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", log.read_text())
        rule = log.parent.name if log.parent.name != "logs" else log.stem
        if rule in NETWORK_RULES:
            assert visible and visible.group(1) in {"0", "1"}, log
            gpu_rules_seen.add(rule)
        elif visible:
            assert visible.group(1) in {"", "unset"}, log
    assert gpu_rules_seen == set(NETWORK_RULES)

    # same outputs as the local run, same numbers (wall-clock figures aside)
    local = runs["local"][0] / "results"
    assert output_files(results) == output_files(local)
    for rel in output_files(results):
        ours, theirs = results / rel, local / rel
        if rel.suffix == ".h5":
            assert_same_h5(ours, theirs)
        elif rel.name == "history.csv":
            assert without_timing_columns(ours) == without_timing_columns(theirs), rel
        elif rel.name == "metrics.json":
            a, b = (json.loads(p.read_text()) for p in (ours, theirs))
            assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
        elif rel.suffix in (".txt", ".csv", ".json"):
            assert ours.read_text() == theirs.read_text(), rel
        elif rel.suffix == ".wav":
            assert ours.read_bytes() == theirs.read_bytes(), rel
        elif rel.suffix == ".pt":
            a, b = safe_load(ours), safe_load(theirs)
            assert a.keys() == b.keys() and a["state_dict"].keys() == b["state_dict"].keys(), rel
            for key, tensor in a["state_dict"].items():
                assert torch.equal(tensor, b["state_dict"][key]), (rel, key)
            assert a["metrics"] == b["metrics"] and a["train_config"] == b["train_config"], rel
        elif rel.suffix in (".png", ".rst", ".yaml"):  # figures, provenance, effective config: same data, same bytes
            assert ours.read_bytes() == theirs.read_bytes(), rel
        else:  # the summary and report.html carry the runs' speeds (windows/s)
            assert rel.suffix in (".md", ".html"), rel

    daemons = list(cluster.procs)
    cluster.stop()
    assert len(daemons) == 3 and all(p.poll() is not None for p in daemons)
    assert not SLURM_CONF.exists() and not GRES_CONF.exists()
