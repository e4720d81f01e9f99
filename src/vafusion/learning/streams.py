"""Which feature streams each trained model fuses.

A *run* is a fusion model trained on a stream set: ``learning.models`` lists ``jca`` (the
default set, ``learning.streams``) or ``jca@pretrained`` (the set ``pretrained`` of
``learning.stream_sets``). Everything downstream (model folders, reports) uses the run's
name, so one fusion model trained on two sets is two rows of the report, compared in its
stream-set table.

The Snakefile checks the config with it at every parse.
"""

from __future__ import annotations

from typing import Iterable

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
        problems += known[name].weight_problems(config)
    for run, model, stream_set in trained_sets(learning):
        if model == "tcn_transformer":
            for name in flat(sets[stream_set]):
                if name not in widths and "default" not in widths:
                    problems.append(f"learning.tcn_transformer.tcn_channels: no widths for the stream '{name}' "
                                    f"(used by '{run}') and no 'default' entry")
    return problems



def presence_streams(config: dict, learnings: Iterable[dict]) -> list[str]:
    """The speech-presence streams some setting reads (``learning.train.missing_audio.voice``
    for the ``unvoiced`` pattern, each run's ``learning.train.unvoiced_audio``; ``learnings``:
    every run's effective learning section): extracted and aligned beside every stream set,
    fused by no model unless a set lists them."""
    found = []
    missing = config["learning"]["train"]["missing_audio"]
    if "unvoiced" in missing["patterns"]:
        found.append(missing["voice"]["stream"])
    for learning in learnings:
        if (voice := learning["train"].get("unvoiced_audio") or {}).get("stream"):
            found.append(voice["stream"])
    return list(dict.fromkeys(found))


def presence_problems(names: Iterable[str], known: dict) -> list[str]:
    """A presence stream that is not a known stream of one value per frame."""
    problems = []
    for name in names:
        if name not in known:
            problems.append(f"learning.train: the speech presence stream '{name}' (missing_audio.voice / "
                            f"unvoiced_audio) is not a stream (known: {', '.join(known)})")
        elif known[name].dim != 1:
            problems.append(f"learning.train: '{name}' (missing_audio.voice / unvoiced_audio) has {known[name].dim} "
                            "values per frame; a speech presence stream has one (speech, mouth_open)")
    return problems


def baselines(config: dict) -> dict[str, dict]:
    """The zero-training baselines (``vafusion.learning.baseline``): ``<stream>_va`` ->
    {"stream", "columns"} for each face model with ``valence_arousal`` columns."""
    return {f"{name}_va": {"stream": name, "columns": list(spec["valence_arousal"])}
            for name, spec in (config["features"].get("face_models") or {}).items()
            if spec.get("valence_arousal")}
