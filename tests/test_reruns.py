"""Incremental reruns: on a completed demo run, the exact set of jobs `snakemake -n` plans
after each kind of change a user makes (README, "What reruns when").

Changes to the shared demo dataset are undone before each test ends, and undoing them must
plan nothing again: restored files are newer than the outputs but carry the checksums that
Snakemake recorded (inputs under 1 MB), so their new modification times alone rerun nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, jobs_of, planned_jobs, snakemake
from vafusion.dataset import discover

pytestmark = pytest.mark.e2e


STREAM_SETS = ("default", "pretrained")  # the test config's sets (conftest.TEST_LEARNING)


def align_jobs(trials, stream_sets=STREAM_SETS) -> set[str]:
    """align_trial of ``trials`` in each stream set (one aligned file per trial and set)."""
    return {f"align_trial[stream_set={s}, trial={t}]" for s in stream_sets for t in trials}


def trained_runs(config: dict) -> list[str]:
    """Every trained run: learning.models and learning.experiments."""
    return list(config["learning"]["models"]) + list(config["learning"]["experiments"])


def runs_fusing(config: dict, stream: str) -> list[str]:
    """The configured runs (<model>[@<set>], experiments) whose stream set holds ``stream``."""
    from vafusion.learning.experiments import resolve_runs
    from vafusion.learning.streams import flat

    return [name for name, run in resolve_runs(config).items() if stream in flat(run.streams)]


def learning_jobs(config: dict, models=None) -> set[str]:
    """Every training of ``models`` (default: every run), their test predictions and figures,
    the ensembles holding one of them, the cross-model figures, the report and the final target."""
    learning = config["learning"]
    models = trained_runs(config) if models is None else models
    ensembles = [e for e, spec in learning["ensembles"].items() if set(spec["members"]) & set(models)]
    folds, seeds = range(learning["n_folds"]), learning["seeds"]
    patterns = learning["train"]["missing_audio"]["patterns"]
    return ({f"train_model[model={m}, seed={s}, fold={k}]" for m in models for s in seeds for k in folds}
            | {f"ensemble_fold[model={e}, seed={s}, fold={k}]" for e in ensembles for s in seeds for k in folds}
            | jobs_of("predict_test", "model", models) | jobs_of("predict_ensemble", "model", ensembles)
            | jobs_of("plot_model", "model", models)
            | jobs_of("plot_gates", "model", [m for m in models if m.split("@")[0].endswith("_iaca")])
            | jobs_of("plot_missing_audio", "pattern", patterns) | {"report", "all"})


def copy_config(config: dict) -> dict:
    return json.loads(json.dumps(config))


@contextlib.contextmanager
def restored(*paths: Path):
    """Restore the content of ``paths`` afterwards (files that did not exist are removed)."""
    saved = {p: p.read_bytes() if p.exists() else None for p in paths}
    try:
        yield
    finally:
        for path, content in saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)


def test_nothing_changed_plans_nothing(demo_run):
    results, config = demo_run
    assert planned_jobs(results.parent, config) == set()


def test_touched_but_unchanged_inputs_plan_nothing(demo_run):
    """New modification times with the same bytes (a copy, a checkout) rerun nothing."""
    results, config = demo_run
    ds = discover(config["data"])
    trial = ds.trials["grid_lbax4n"]
    touched = [trial.annotation, ds.videos[trial.video]]
    with restored(*touched):
        for path in touched:
            path.write_bytes(path.read_bytes())
        assert planned_jobs(results.parent, config) == set()


def test_changed_annotation_reruns_its_trial_and_learning(demo_run):
    results, config = demo_run
    annotation = discover(config["data"]).trials["grid_lbax4n"].annotation
    with restored(annotation):
        lines = annotation.read_text().splitlines()
        lines[5] = "0.123,-0.456" if lines[5] != "0.123,-0.456" else "0.5,0.5"
        annotation.write_text("\n".join(lines) + "\n")
        assert planned_jobs(results.parent, config) == (
            {"read_annotation[trial=grid_lbax4n]", "make_folds"} | align_jobs(["grid_lbax4n"])
            | learning_jobs(config))
    assert planned_jobs(results.parent, config) == set()


def test_new_video_runs_only_its_own_media_jobs(demo_run):
    results, config = demo_run
    ds = discover(config["data"])
    source = ds.trials["grid_lbax4n"]
    video = Path(config["data"]["videos"]) / "batch2" / "grid_newcomer.mp4"
    annotation = Path(config["data"]["annotations"]["train"]) / "grid_newcomer.txt"
    with restored(video, annotation):
        shutil.copyfile(ds.videos[source.video], video)
        shutil.copyfile(source.annotation, annotation)
        new = "grid_newcomer"
        assert planned_jobs(results.parent, config) == (
            {f"extract_audio[video={new}]", f"extract_mfcc[video={new}]", f"extract_vggish[video={new}]",
             f"extract_egemaps[video={new}]", f"extract_speech[video={new}]", f"align_faces[trial={new}]",
             f"read_annotation[trial={new}]",
             f"extract_iresnet50[trial={new}]", f"extract_landmarks[trial={new}]", "make_folds"}
            | align_jobs([new])
            | learning_jobs(config))
    assert planned_jobs(results.parent, config) == set()


def test_changed_training_parameter_reruns_training_and_reports(demo_run):
    results, config = demo_run
    changed = copy_config(config)
    changed["learning"]["train"]["weight_decay"] = 0.02  # (the experiment overrides lr, not this)
    assert planned_jobs(results.parent, changed) == learning_jobs(config)


def test_added_seed_trains_only_the_new_seed(demo_run):
    """Seeds are a dimension of the workflow: seed 1 is new trainings and ensemble folds; the
    seed-0 trainings stay; what reads every seed (test predictions, figures, report) reruns."""
    results, config = demo_run
    changed = copy_config(config)
    changed["learning"]["seeds"] = [0, 1]
    learning = config["learning"]
    runs, folds = trained_runs(config), range(learning["n_folds"])
    assert planned_jobs(results.parent, changed) == (
        {f"train_model[model={m}, seed=1, fold={k}]" for m in runs for k in folds}
        | {f"ensemble_fold[model={e}, seed=1, fold={k}]" for e in learning["ensembles"] for k in folds}
        | (learning_jobs(config) - {j for j in learning_jobs(config) if j.startswith(("train_model", "ensemble_fold"))}))


def test_changed_experiment_reruns_only_that_experiment(demo_run):
    results, config = demo_run
    changed = copy_config(config)
    name = next(iter(config["learning"]["experiments"]))
    changed["learning"]["experiments"][name]["overrides"]["train"]["lr"] = 0.003
    assert planned_jobs(results.parent, changed) == learning_jobs(config, [name])


def test_changed_model_parameter_reruns_only_that_model(demo_run):
    results, config = demo_run
    changed = copy_config(config)
    changed["learning"]["cross_attention"]["dim"] = 64
    attention_models = [m for m in config["learning"]["models"] if m.split("@")[0] != "tcn_transformer"]
    assert attention_models and len(attention_models) < len(trained_runs(config))  # the experiment is a TCN
    assert planned_jobs(results.parent, changed) == learning_jobs(config, attention_models)


@pytest.mark.parametrize(
    "section, key, value, rule",
    [("mfcc", "lifter", 0, "extract_mfcc"), ("vggish", "final_relu", False, "extract_vggish"),
     ("iresnet50", "batch_size", 8, "extract_iresnet50")],
)
def test_changed_feature_parameter_reruns_that_feature_and_what_follows(demo_run, section, key, value, rule):
    """That extractor's jobs (and, for audio, its missing-audio fills), the alignments of the
    stream sets holding it and the models fusing it; no media job, no other extractor, no
    model on another stream set."""
    results, config = demo_run
    ds = discover(config["data"])
    changed = copy_config(config)
    changed["features"][section][key] = value
    per_video = section in ("mfcc", "vggish")
    extractor = jobs_of(rule, "video", ds.used_videos) if per_video else jobs_of(rule, "trial", ds.trials)
    fills = {f"fill_{section}"} if per_video else set()  # an audio stream's fills follow its extractor
    runs = runs_fusing(config, section)
    assert runs and len(runs) < len(trained_runs(config))  # the pretrained set's model stays
    assert planned_jobs(results.parent, changed) == (
        extractor | fills | align_jobs(ds.trials, ["default"]) | learning_jobs(config, runs))


def test_changed_script_reruns_its_rule_and_what_follows(demo_run):
    """Snakemake tracks a rule's script (not the package it calls) by modification time."""
    results, config = demo_run
    ds = discover(config["data"])
    script = REPO / "workflow" / "scripts" / "align_trial.py"
    before = script.stat()
    try:
        os.utime(script)  # now: newer than every aligned file
        assert planned_jobs(results.parent, config) == align_jobs(ds.trials) | learning_jobs(config)
        listed = snakemake(results.parent, "--configfile", str(results.parent / "config.yaml"),
                           "--list-changes", "code").stdout.split()
        assert set(listed) == {f"results/aligned/{s}/{t}.h5" for s in STREAM_SETS for t in ds.trials}
    finally:
        os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert planned_jobs(results.parent, config) == set()
