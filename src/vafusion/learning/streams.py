"""Which feature streams each trained model fuses.

A *run* is a fusion model trained on a stream set: ``learning.models`` lists ``jca`` (the
default set, ``learning.streams``) or ``jca@pretrained`` (the set ``pretrained`` of
``learning.stream_sets``). Everything downstream (model folders, reports) uses the run's
name, so one fusion model trained on two sets is two rows of the report, compared in its
stream-set table.

The Snakefile checks the config with it at every parse.
"""

from __future__ import annotations

from vafusion.features import registry
from vafusion.models import FUSION_MODELS

DEFAULT_SET = "default"
SEPARATOR = "@"


def split_run(run: str) -> tuple[str, str]:
    """``"jca@pretrained"`` -> ``("jca", "pretrained")``; ``"jca"`` -> ``("jca", "default")``."""
    model, _, stream_set = run.partition(SEPARATOR)
    return model, stream_set or DEFAULT_SET


def stream_sets(learning: dict) -> dict[str, dict[str, list[str]]]:
    """Every stream set by name: ``default`` (``learning.streams``) and ``learning.stream_sets``."""
    return {DEFAULT_SET: learning["streams"], **(learning.get("stream_sets") or {})}


def run_streams(run: str, learning: dict) -> dict[str, list[str]]:
    """{"audio": [...], "visual": [...]}: the streams ``run`` fuses, per modality."""
    sets = stream_sets(learning)
    _, name = split_run(run)
    if name not in sets:
        raise KeyError(f"learning.models: '{run}' names the stream set '{name}', which learning.stream_sets does not "
                       f"define (defined: {', '.join(sets)})")
    return {"audio": list(sets[name]["audio"]), "visual": list(sets[name]["visual"])}


def flat(streams: dict[str, list[str]]) -> list[str]:
    """A set's streams in one list, visual first (the order the models concatenate them in)."""
    return list(streams["visual"]) + list(streams["audio"])


def trained_sets(learning: dict) -> list[tuple[str, str, str]]:
    """(run, fusion model, stream set) of every run trained: ``learning.models`` and
    ``learning.experiments`` (each with its own ``model`` and ``stream_set``)."""
    runs = [(run, *split_run(run)) for run in learning["models"]]
    for name, spec in (learning.get("experiments") or {}).items():
        runs.append((name, spec["model"], spec.get("stream_set") or DEFAULT_SET))
    return runs


def used_streams(config: dict) -> list[str]:
    """The streams some configured run fuses, in a stable order: the only ones extracted."""
    learning = config["learning"]
    sets = stream_sets(learning)
    out: list[str] = []
    for _, _, stream_set in trained_sets(learning):
        for name in flat(sets.get(stream_set, {"audio": [], "visual": []})):
            if name not in out:
                out.append(name)
    return out


def stream_problems(config: dict) -> list[str]:
    """What in the stream configuration cannot work, each naming the config key: an unknown
    stream, one in the wrong modality, an empty modality, an unknown set, an external
    stream's bad settings, a network that needs weights and has none, a TCN stream
    without widths. Checked when the workflow is parsed, before any job runs."""
    learning = config["learning"]
    problems: list[str] = []
    try:
        known = registry.streams(config)
    except ValueError as err:
        return [str(err)]
    for name, spec in registry.external_streams(config).items():
        from vafusion.features.external import validate_settings

        problems += validate_settings(name, dict(config["features"]["external"][name]))
    sets = stream_sets(learning)
    for set_name, streams in sets.items():
        key = "learning.streams" if set_name == DEFAULT_SET else f"learning.stream_sets.{set_name}"
        for modality in registry.MODALITIES:
            names = streams.get(modality) or []
            if not names:
                problems.append(f"{key}.{modality}: empty; every fusion model needs at least one {modality} stream")
            for name in names:
                if name not in known:
                    problems.append(f"{key}.{modality}: unknown stream '{name}' (known: {', '.join(known)}; "
                                    "your own features: features.external)")
                elif known[name].modality != modality:
                    problems.append(f"{key}.{modality}: '{name}' is an {known[name].modality} stream")
            if len(set(names)) != len(names):
                problems.append(f"{key}.{modality}: a stream is listed twice")
    for run in learning["models"]:
        model, set_name = split_run(run)
        if model not in FUSION_MODELS:
            problems.append(f"learning.models: '{run}': unknown fusion model '{model}' (known: "
                            f"{', '.join(FUSION_MODELS)})")
        if set_name not in sets:
            problems.append(f"learning.models: '{run}' names the stream set '{set_name}', which learning.stream_sets "
                            f"does not define (defined: {', '.join(sets)})")
    if problems:
        return problems
    widths = learning["tcn_transformer"]["tcn_channels"]
    for name in used_streams(config):
        spec = known[name]
        if spec.requires_weights and not any(config["weights"].get(w) for w in spec.weights):
            problems.append(f"weights.{spec.weights[0]}: the stream '{name}' needs a checkpoint (a randomly "
                            f"initialised {name} is meaningless): give its path, or remove '{name}' from "
                            "learning.streams / learning.stream_sets")
    for run, model, stream_set in trained_sets(learning):
        if model == "tcn_transformer":
            for name in flat(sets[stream_set]):
                if name not in widths and "default" not in widths:
                    problems.append(f"learning.tcn_transformer.tcn_channels: no widths for the stream '{name}' "
                                    f"(used by '{run}') and no 'default' entry")
    return problems

