"""Experiments and ensembles as configuration: every run's effective settings, and the
configurations that cannot work stopped at planning with their key named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import REPO, snakemake, write_config
from vafusion.learning.experiments import experiment_problems, merge, resolve_runs
from vafusion.learning.streams import used_streams

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def with_learning(**changes) -> dict:
    config = copy.deepcopy(CONFIG)
    config["learning"].update(changes)
    return config


def test_merge_replaces_leaves_and_merges_nested_sections_without_touching_its_input():
    base = {"train": {"lr": 1, "missing_audio": {"fill": "zeros", "shares": [0.0]}}, "seeds": [0]}
    merged = merge(base, {"train": {"lr": 2, "missing_audio": {"shares": [0.5]}}})
    assert merged == {"train": {"lr": 2, "missing_audio": {"fill": "zeros", "shares": [0.5]}}, "seeds": [0]}
    assert base["train"]["lr"] == 1 and base["train"]["missing_audio"]["shares"] == [0.0]


def test_every_run_has_its_fusion_model_stream_set_and_effective_settings(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"learning": {"models": ["ca"], "n_folds": 9,  # not an experiment's to change
                                                   "train": {"lr": 0.5, "batch_size": 3},
                                                   "cross_attention": {"dim": 32}}}))
    config = with_learning(models=["jca", "jca@pretrained"], ensembles={}, experiments={
        "jca_small": {"model": "jca", "preset": str(preset), "overrides": {"train": {"lr": 0.25}}},
        "rjca_streams": {"model": "rjca", "stream_set": "pretrained"}})
    runs = resolve_runs(config)
    assert list(runs) == ["jca", "jca@pretrained", "jca_small", "rjca_streams"]
    learning = config["learning"]
    assert runs["jca"].learning == learning and runs["jca"].changes == ""
    assert runs["jca@pretrained"].streams == learning["stream_sets"]["pretrained"]
    small = runs["jca_small"]
    assert small.fusion_model == "jca" and small.stream_set == "default"
    # the preset's learning settings, then the overrides on top; folds and models stay the config's
    assert small.learning["train"] == {**learning["train"], "lr": 0.25, "batch_size": 3}
    assert small.hparams == {**learning["cross_attention"], "dim": 32}
    assert small.learning["n_folds"] == learning["n_folds"] and small.learning["seeds"] == learning["seeds"]
    assert small.changes == "preset preset.yaml, train.lr=0.25"
    assert runs["rjca_streams"].streams == learning["stream_sets"]["pretrained"]
    assert runs["rjca_streams"].changes == "stream set pretrained"
    # an experiment's streams are extracted like a listed model's
    only_default = with_learning(models=["jca"], ensembles={},
                                 experiments={"x": {"model": "ca", "stream_set": "pretrained"}})
    assert set(used_streams(only_default)) == {"iresnet50", "vggish", "mfcc"} | set(
        learning["stream_sets"]["pretrained"]["audio"] + learning["stream_sets"]["pretrained"]["visual"])
    assert experiment_problems(config) == []


@pytest.mark.parametrize("experiments, ensembles, message", [
    ({"x": {"model": "jcaa"}}, {}, "learning.experiments.x.model: unknown fusion model 'jcaa'"),
    ({"x": {"model": "jca", "stream_set": "nope"}}, {}, "learning.experiments.x.stream_set: 'nope' is not a stream set"),
    ({"x": {"model": "jca", "overrides": {"n_folds": 3}}}, {}, "learning.experiments.x.overrides.n_folds: an "
                                                              "experiment changes only train"),
    ({"x": {"model": "jca", "overrides": {"seeds": [1]}}}, {}, "learning.experiments.x.overrides.seeds"),
    ({"x": {"model": "jca", "preset": "no/such.yaml"}}, {}, "learning.experiments.x.preset: file 'no/such.yaml'"),
    ({"x": {"model": "jca", "overrides": {"train": {"missing_audio": {"fill": "silence"}}}}}, {},
     "learning.experiments.x: changes learning.train.missing_audio"),
    ({"jca": {"model": "jca"}}, {}, "learning.experiments.jca: the name is a fusion model or a listed model"),
    ({"x": {"model": "tca", "overrides": {"cross_attention": {"tca_heads": 3}}}}, {},
     "learning.experiments.x: learning.cross_attention.tca_heads: 3 does not divide dim"),
    ({}, {"e": {"members": ["jca", "nothere"]}}, "learning.ensembles.e.members: 'nothere' is not a run"),
    ({}, {"e": {"members": ["jca", "jca"]}}, "learning.ensembles.e.members: a run is listed twice"),
    ({"x": {"model": "jca"}}, {"x": {"members": ["jca", "x"]}}, "learning.ensembles.x: the name is also a run's"),
])
def test_experiments_and_ensembles_that_cannot_work_name_their_key(experiments, ensembles, message):
    problems = experiment_problems(with_learning(experiments=experiments, ensembles=ensembles))
    assert any(message in p for p in problems), problems


def test_an_experiments_values_are_checked_against_the_schema():
    """With the workflow's own schema and validator (Snakefile: validate_learning)."""
    from conftest import workflow_schema
    from vafusion.schema import validate

    config = with_learning(experiments={"x": {"model": "jca", "overrides": {"train": {"lr": -1}}}})
    schema = workflow_schema(config)
    problems = experiment_problems(config, lambda learning: validate(copy.deepcopy({**config, "learning": learning}),
                                                                     schema))
    assert len(problems) == 1 and problems[0].startswith("learning.experiments.x: its settings do not validate")
    assert "config key learning.train.lr: -1 " in problems[0]  # the key and the value
    fine = with_learning(experiments={"x": {"model": "jca", "overrides": {"train": {"lr": 0.1}}}})
    assert experiment_problems(fine, lambda learning: validate(copy.deepcopy({**fine, "learning": learning}),
                                                               schema)) == []


@pytest.mark.e2e
def test_the_workflow_stops_at_planning_on_an_experiment_that_changes_the_folds(demo_dataset, tmp_path):
    path = write_config(tmp_path, demo_dataset)
    config = yaml.safe_load(path.read_text())
    config["learning"]["experiments"] = {"more_folds": {"model": "jca", "overrides": {"n_folds": 5}},
                                         "bad_lr": {"model": "jca", "overrides": {"train": {"lr": -1.0}}}}
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "learning.experiments.more_folds.overrides.n_folds: an experiment changes only train" in out
    # past the structural checks: the schema (Snakefile's validate_learning) and the missing-audio test
    config["learning"]["experiments"] = {"bad_lr": {"model": "jca", "overrides": {"train": {"lr": -1.0}}},
                                         "silent": {"model": "jca", "overrides": {"train": {"missing_audio": {
                                             "fill": "silence"}}}}}
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "learning.experiments.bad_lr: its settings do not validate" in out and "learning.train.lr" in out
    assert "learning.experiments.silent: changes learning.train.missing_audio" in out
