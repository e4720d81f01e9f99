"""Runs, experiments and ensembles: every name the report has a row for.

A *run* is one fusion model trained with one set of settings on every fold and seed:

- ``learning.models`` lists ``jca`` (the default stream set and ``learning``'s settings) or
  ``jca@pretrained`` (another stream set, ``vafusion.learning.streams``);
- ``learning.experiments`` names ablation variants: a fusion model with a stream set, a
  preset's learning settings and/or overrides of ``learning.train``,
  ``learning.tcn_transformer`` and ``learning.cross_attention``. Folds and seeds are the
  configuration's, so every variant is scored on the same validation videos and paired
  comparisons hold.

An *ensemble* (``learning.ensembles``) averages the predictions of several runs per frame.

The Snakefile resolves every name here when it is parsed; each run's effective settings
become its jobs' params, so changing one experiment reruns that experiment only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from vafusion.learning.streams import DEFAULT_SET, stream_sets, trained_sets
from vafusion.models import FUSION_MODELS, config_section, settings_problems

# the learning sections an experiment may change: what one training does. Folds, seeds and
# stream definitions stay the configuration's (same validation videos for every variant).
VARIED_SECTIONS = ("train", "tcn_transformer", "cross_attention")


@dataclass(frozen=True)
class Run:
    name: str  # the folder name: models/<name>/
    fusion_model: str  # the architecture (vafusion.models.FUSION_MODELS)
    stream_set: str
    learning: dict  # the effective learning section (the experiment's changes applied)
    changes: str  # what differs from the configuration, for the report ("" for a listed model)

    @property
    def hparams(self) -> dict:
        return self.learning[config_section(self.fusion_model)]

    @property
    def streams(self) -> dict[str, list[str]]:
        chosen = stream_sets(self.learning)[self.stream_set]
        return {"audio": list(chosen["audio"]), "visual": list(chosen["visual"])}


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else \
            copy.deepcopy(value)
    return out


def _flatten(changes: dict, prefix: str = "") -> list[str]:
    items = []
    for key, value in changes.items():
        if isinstance(value, dict) and value:
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}")
    return items


def preset_learning(path: str | Path) -> dict:
    """The sections of a preset's ``learning`` that an experiment takes (``VARIED_SECTIONS``)."""
    learning = (yaml.safe_load(Path(path).read_text()) or {}).get("learning") or {}
    return {k: v for k, v in learning.items() if k in VARIED_SECTIONS}


def resolve_runs(config: dict) -> dict[str, Run]:
    """Every run by name: ``learning.models`` then ``learning.experiments``."""
    learning = config["learning"]
    experiments = learning.get("experiments") or {}
    runs = {}
    for name, model, stream_set in trained_sets(learning):
        if name not in experiments:  # a listed model: the configuration's settings
            runs[name] = Run(name, model, stream_set, learning, "" if stream_set == DEFAULT_SET else
                             f"stream set {stream_set}")
            continue
        spec = experiments[name]
        changes: dict = {}
        described = []
        if spec.get("preset"):
            changes = merge(changes, preset_learning(spec["preset"]))
            described.append(f"preset {Path(spec['preset']).name}")
        overrides = spec.get("overrides") or {}
        changes = merge(changes, overrides)
        described += _flatten(overrides)
        if stream_set != DEFAULT_SET:
            described.insert(0, f"stream set {stream_set}")
        runs[name] = Run(name, model, stream_set, merge(learning, changes), ", ".join(described) or "-")
    return runs


def experiment_problems(config: dict, validate=None) -> list[str]:
    """What in ``learning.experiments`` / ``learning.ensembles`` cannot work, each naming its key.
    ``validate(learning)`` checks an experiment's effective learning section against the
    schema (the Snakefile passes one; it raises on a bad value)."""
    learning = config["learning"]
    problems = []
    experiments = learning.get("experiments") or {}
    sets = stream_sets(learning)
    for name, spec in experiments.items():
        key = f"learning.experiments.{name}"
        if name in learning["models"] or name in FUSION_MODELS:
            problems.append(f"{key}: the name is a fusion model or a listed model; name the variant")
        if spec["model"] not in FUSION_MODELS:
            problems.append(f"{key}.model: unknown fusion model '{spec['model']}' (known: {', '.join(FUSION_MODELS)})")
        if (spec.get("stream_set") or DEFAULT_SET) not in sets:
            problems.append(f"{key}.stream_set: '{spec['stream_set']}' is not a stream set (defined: "
                            f"{', '.join(sets)})")
        if spec.get("preset") and not Path(spec["preset"]).is_file():
            problems.append(f"{key}.preset: file '{spec['preset']}' does not exist")
        for section in spec.get("overrides") or {}:
            if section not in VARIED_SECTIONS:
                problems.append(f"{key}.overrides.{section}: an experiment changes only "
                                f"{', '.join(VARIED_SECTIONS)} (folds, seeds and streams are shared by all variants)")
    if problems:
        return problems
    runs = resolve_runs(config)
    for name in experiments:
        run = runs[name]
        if run.learning["train"]["missing_audio"] != learning["train"]["missing_audio"]:
            problems.append(f"learning.experiments.{name}: changes learning.train.missing_audio (through its "
                            "overrides or preset): every run is tested on the same missing-audio shares, patterns and "
                            "fill, or the report's curves and tables cannot put them side by side; set it in "
                            "learning.train for all runs")
        if validate is not None:
            try:
                validate(run.learning)
            except Exception as err:  # the schema validator's message names the bad value
                problems.append(f"learning.experiments.{name}: its settings do not validate: {err}")
                continue
        problems += [f"learning.experiments.{name}: {p}"
                     for p in settings_problems({**run.learning, "models": [run.fusion_model]})]
    for name, spec in (learning.get("ensembles") or {}).items():
        key = f"learning.ensembles.{name}"
        if name in runs:
            problems.append(f"{key}: the name is also a run's")
        for member in spec["members"]:
            if member not in runs:
                problems.append(f"{key}.members: '{member}' is not a run (learning.models or learning.experiments)")
        if len(set(spec["members"])) != len(spec["members"]):
            problems.append(f"{key}.members: a run is listed twice")
    return problems


def ensembles(config: dict) -> dict[str, dict]:
    """``learning.ensembles``: name -> {"members": [...], "weights": "equal" | "ccc"}."""
    return dict(config["learning"].get("ensembles") or {})
