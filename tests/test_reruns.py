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


def learning_jobs(config: dict, models=None) -> set[str]:
    """Every training of ``models``, their test predictions and figures, the cross-model
    figures, the report and the final target."""
    models = config["learning"]["models"] if models is None else models
    patterns = config["learning"]["train"]["missing_audio"]["patterns"]
    return ({f"train_model[model={m}, fold={k}]" for m in models for k in range(config["learning"]["n_folds"])}
            | jobs_of("predict_test", "model", models) | jobs_of("plot_model", "model", models)
            | jobs_of("plot_gates", "model", [m for m in models if m.endswith("_iaca")])
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
            {"read_annotation[trial=grid_lbax4n]", "align_trial[trial=grid_lbax4n]", "make_folds"}
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
             f"align_faces[trial={new}]", f"read_annotation[trial={new}]", f"extract_iresnet50[trial={new}]",
             f"align_trial[trial={new}]", "make_folds"}
            | learning_jobs(config))
    assert planned_jobs(results.parent, config) == set()


def test_changed_training_parameter_reruns_training_and_reports(demo_run):
    results, config = demo_run
    changed = copy_config(config)
    changed["learning"]["train"]["lr"] = 0.002
    assert planned_jobs(results.parent, changed) == learning_jobs(config)


def test_changed_model_parameter_reruns_only_that_model(demo_run):
    results, config = demo_run
    changed = copy_config(config)
    changed["learning"]["cross_attention"]["dim"] = 64
    attention_models = [m for m in config["learning"]["models"] if m != "tcn_transformer"]
    assert attention_models and len(attention_models) < len(config["learning"]["models"])
    assert planned_jobs(results.parent, changed) == learning_jobs(config, attention_models)


@pytest.mark.parametrize(
    "section, key, value, rule",
    [("mfcc", "lifter", 0, "extract_mfcc"), ("vggish", "final_relu", False, "extract_vggish"),
     ("iresnet50", "batch_size", 8, "extract_iresnet50")],
)
def test_changed_feature_parameter_reruns_that_feature_and_what_follows(demo_run, section, key, value, rule):
    """That extractor's jobs (and, for audio, the silence features), every alignment and the
    learning; no media job, no other extractor."""
    results, config = demo_run
    ds = discover(config["data"])
    changed = copy_config(config)
    changed["features"][section][key] = value
    per_video = section in ("mfcc", "vggish")
    extractor = jobs_of(rule, "video", ds.used_videos) if per_video else jobs_of(rule, "trial", ds.trials)
    silence = {"silence_features"} if per_video else set()  # the audio features of silence follow the audio extractors
    assert planned_jobs(results.parent, changed) == (
        extractor | silence | jobs_of("align_trial", "trial", ds.trials) | learning_jobs(config))


def test_changed_script_reruns_its_rule_and_what_follows(demo_run):
    """Snakemake tracks a rule's script (not the package it calls) by modification time."""
    results, config = demo_run
    ds = discover(config["data"])
    script = REPO / "workflow" / "scripts" / "extract_mfcc.py"
    before = script.stat()
    try:
        os.utime(script)  # now: newer than every MFCC file
        assert planned_jobs(results.parent, config) == (
            jobs_of("extract_mfcc", "video", ds.used_videos) | jobs_of("align_trial", "trial", ds.trials)
            | learning_jobs(config))
        listed = snakemake(results.parent, "--configfile", str(results.parent / "config.yaml"),
                           "--list-changes", "code").stdout.split()
        assert set(listed) == {f"results/features/mfcc/{video}.h5" for video in ds.used_videos}
    finally:
        os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert planned_jobs(results.parent, config) == set()
