"""Which features the trained models saw, and the check that a prediction feeds them the same.

Every feature file records what made it (``vafusion.features.common.provenance``: the
extractor's settings, the weights file's sha256 or ``random-init`` and its seed). The
aligned files keep a copy per stream (attribute ``<stream>_provenance``), and training
stores what its fold's trials agree on in every ``model.pt`` under ``feature_provenance``
(the *record*)::

    {"format": 1, "trials": 14,
     "streams": {"vggish": {"extractor": "vggish",
                            "params": {"batch_size": 64, "final_relu": true, "pca": false,
                                       "sample_rate": 16000, "example": "centred on frame time"},
                            "weights": "random-init", "weights_sha256": "random-init",
                            "weights_seed": 0},
                 "iresnet50": {...}, "mfcc": {... "weights_sha256": ""}}}

A run with ``learning.trained_run`` compares that record with the features its own config
makes (``config_record``) when the workflow is parsed, and stops before any job, naming
each stream, setting and both values (``trained_run_problems``); the prediction job checks
the record against the test trials' aligned files once more (``check_features``).

Compared: every extractor setting except those that only change the speed (``SPEED_ONLY``),
the sample rate of the audio streams, and the weights: their sha256, or the seed of the
random initialisation. Not compared: the device (on CUDA the networks run under bfloat16
autocast: a rounding of the same features, not other features), and where the faces come
from (the dataset's aligned faces or detected ones: 112x112 aligned faces either way, and
new videos seldom have dataset faces; see README, Predicting new videos).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

from vafusion.features import registry
from vafusion.io import atomic_output
from vafusion.weights import RANDOM_INIT

RECORD_KEY = "feature_provenance"
RECORD_FORMAT = 1
NO_NETWORK = ""  # weights_sha256 of a stream that has no network (MFCC)
# Settings that change how fast features are made, never their values.
SPEED_ONLY = frozenset({"batch_size", "channels_last"})
# The provenance attributes that say which features a file holds (the rest is per file:
# device, versions, audio_missing, face source), and every other file a stream read:
# ``<name>_sha256`` with its ``<name>`` (VGGish's ``pca_weights``, the face descriptor's
# ``shape_predictor``).
IDENTITY = ("extractor", "params", "weights", "weights_sha256", "weights_seed")


def _plain(value):
    """An HDF5 attribute as a plain Python value (numpy scalars unwrapped)."""
    return value.item() if hasattr(value, "item") else value


def stream_entry(provenance: Mapping) -> dict:
    """A stream's part of the record, from its feature file's provenance attributes. Features
    imported from CSV files keep their settings only: each trial's file has its own hash
    (kept in the feature and aligned files), which says nothing about the features' kind."""
    if _plain(provenance.get("extractor")) == "external":
        identity = ("extractor", "params")
    else:
        more = [k for k in provenance if k.endswith("_sha256") and k not in IDENTITY]
        identity = IDENTITY + tuple(more) + tuple(k.removesuffix("_sha256") for k in more)
    entry = {k: _plain(provenance[k]) for k in identity if k in provenance}
    if isinstance(entry.get("params"), str):
        entry["params"] = json.loads(entry["params"])
    return entry


def setting_name(stream: str, key: str) -> str:
    """The config key behind an extractor setting."""
    return "media.sample_rate" if key == "sample_rate" else f"features.{stream}.{key}"


_MISSING = object()


def _value(value) -> str:
    return "(not recorded)" if value is _MISSING else json.dumps(value)


def _weights(entry: dict, name: str = "weights") -> str:
    """A file the stream read, as a record says: ``<name>`` and ``<name>_sha256``."""
    sha = entry.get(f"{name}_sha256", _MISSING)
    if sha is _MISSING:
        return "(not recorded)"
    if sha == RANDOM_INIT:
        return f"random-init (seed {entry.get('weights_seed')})"
    if sha == NO_NETWORK:
        return "none"
    text = f"'{entry.get(name)}'"
    return f"{text} (sha256 {sha[:16]}...)" if sha else text


def stream_differences(stream: str, trained: dict, current: dict, *,
                       keys: Iterable[str] | None = None) -> list[tuple[str, str, str]]:
    """(setting, value the models were trained with, value here) for each difference of one
    stream. ``keys``: the settings to compare (default: those ``current`` holds), always
    without ``SPEED_ONLY``. ``current["weights_sha256"]`` may be None when it was not worth
    hashing: the trained features had no file to compare it with."""
    found = []
    t_params, c_params = trained.get("params", {}), current.get("params", {})
    for key in sorted(set(c_params if keys is None else keys) - SPEED_ONLY):
        t_value, c_value = t_params.get(key, _MISSING), c_params.get(key, _MISSING)
        if c_value is _MISSING and keys is None:
            continue
        if t_value is _MISSING or c_value is _MISSING or t_value != c_value:
            found.append((setting_name(stream, key), _value(t_value), _value(c_value)))
    t_sha, c_sha = trained.get("weights_sha256", _MISSING), current.get("weights_sha256", _MISSING)
    if "weights_sha256" not in current and keys is None:
        pass  # a config cannot say: the stream's model ships in a package (its version is compared in the files)
    elif t_sha == RANDOM_INIT and c_sha == RANDOM_INIT:
        if trained.get("weights_seed") != current.get("weights_seed"):
            found.append(("features.random_init_seed", _value(trained.get("weights_seed", _MISSING)),
                          _value(current.get("weights_seed", _MISSING))))
    elif t_sha != c_sha:
        found.append((f"weights.{stream}", _weights(trained), _weights(current)))
    for key in sorted((set(trained) | set(current)) - {"weights_sha256", "files_sha256"}):
        # the other files the stream read: a config knows only its weights keys' (VGGish's PCA
        # when on), two feature files know all (the face descriptor's shape predictor too)
        if not key.endswith("_sha256") or (key not in current and keys is None):
            continue
        if trained.get(key) != current.get(key):
            name = key.removesuffix("_sha256")
            setting = (f"weights.{stream}_{name.removesuffix('_weights')}" if name.endswith("_weights")
                       else f"{stream}'s {name.replace('_', ' ')}")
            found.append((setting, _weights(trained, name), _weights(current, name)))
    return found


def record_differences(trained: dict, current: dict, *, all_keys: bool = False) -> list[tuple[str, str, str, str]]:
    """(stream, setting, trained value, value here) for every difference between two
    records. ``all_keys``: compare every setting either side holds (two records read from
    files); otherwise those ``current`` holds (``current`` made from a config, which knows
    the settings a user can change, not the extractors' fixed ones)."""
    found = []
    t_streams, c_streams = trained.get("streams", {}), current.get("streams", {})
    for stream in sorted(t_streams):  # the streams the models fuse; more made here do not matter
        if stream not in c_streams:
            found.append((stream, "stream", "used", "not made here"))
        else:
            t, c = t_streams[stream], c_streams[stream]
            keys = set(t.get("params", {})) | set(c.get("params", {})) if all_keys else None
            found += [(stream, *d) for d in stream_differences(stream, t, c, keys=keys)]
    return found


def format_differences(differences: Iterable[tuple[str, str, str, str]]) -> list[str]:
    return [f"  {stream}: {setting}: the models were trained with {trained}, this run has {here}"
            for stream, setting, trained, here in differences]


# --- training: the record of a fold's aligned files ------------------------------------------

def aligned_record(paths: Iterable[str | Path], streams: Iterable[str]) -> dict:
    """The record of the ``streams`` in ``paths`` (aligned files), which must all hold the
    same features; raises ValueError naming the files otherwise, or when a file keeps no
    provenance (aligned by an older vafusion, or from feature files without it)."""
    import h5py

    paths, streams = [Path(p) for p in paths], list(streams)
    if not paths:
        raise ValueError("no aligned files to take the feature record from")
    first, first_path = None, None
    files: dict[str, dict[str, str]] = {s: {} for s in streams}
    for path in paths:
        with h5py.File(path, "r") as h5:
            kept = {s: h5.attrs.get(f"{s}_provenance") for s in streams}
        if missing := [s for s, v in kept.items() if not v or "params" not in json.loads(v)]:
            raise ValueError(f"{path}: keeps no provenance of its {', '.join(missing)} features (aligned by an older "
                             f"vafusion, or from feature files without it): delete the aligned files and run again")
        record = {"format": RECORD_FORMAT, "streams": {s: stream_entry(json.loads(v)) for s, v in kept.items()}}
        for s, v in kept.items():  # features made elsewhere: each trial's file hash, for the reports
            if record["streams"][s].get("extractor") == "external":
                files[s][path.stem] = json.loads(v).get("weights_sha256", "")
        if first is None:
            first, first_path = record, path
        elif differences := record_differences(first, record, all_keys=True):
            raise ValueError(f"{first_path} and {path} hold features made with different settings or weights; "
                             f"one model cannot be trained on both (rerun the feature jobs):\n"
                             + "\n".join(f"  {s}: {k}: {a} in the first, {b} in the second"
                                         for s, k, a, b in differences))
    for s, hashes in files.items():
        if hashes:
            first["streams"][s]["files_sha256"] = hashes
    return {**first, "trials": len(paths)}


def read_record(model_path: str | Path) -> dict | None:
    """The record a ``model.pt`` holds; None for a model trained before records were kept.
    Only the file's structure is read (memory-mapped), not its weights."""
    import pickle

    from vafusion.weights import safe_load

    try:
        saved = safe_load(model_path, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:
        raise ValueError(f"{model_path}: cannot be read as a trained model: {err}") from None
    record = saved.get(RECORD_KEY) if isinstance(saved, dict) else None
    return record if isinstance(record, dict) and record.get("streams") else None


# --- a run's own features, from its config ---------------------------------------------------

def stream_params(config: dict, streams: Iterable[str]) -> dict[str, dict]:
    """Each stream's extractor settings as the feature rules pass them (the registry's
    ``Stream.settings``), with the sample rate for the streams made from the WAV."""
    known = registry.streams(config)
    params = {}
    for s in streams:
        if s in known:
            params[s] = dict(known[s].settings(config))
            if known[s].source == "wav":
                params[s].setdefault("sample_rate", config["media"]["sample_rate"])
    return params


def config_record(config: dict, sha256: Callable[[str], str], trained: Iterable[dict] = ()) -> dict:
    """The record of the features this config makes. A weights file is hashed (``sha256``)
    only when some ``trained`` record holds a weights file for that network to compare it
    with: against random-init features, or with no record at all, the file differs anyway."""
    trained = list(trained)
    from vafusion.learning.streams import used_streams

    known = registry.streams(config)
    made = used_streams(config)  # the streams this config extracts

    def needs_hash(stream: str, prefix: str = "") -> bool:
        return any(r.get("streams", {}).get(stream, {}).get(f"{prefix}weights_sha256") not in (None, RANDOM_INIT,
                                                                                             NO_NETWORK)
                   for r in trained)

    seed = config["features"]["random_init_seed"]
    streams = {}
    for stream, params in stream_params(config, made).items():
        spec = known[stream]
        entry = {"extractor": "external" if spec.source == "csv" else stream, "params": params}
        # no weights to compare for a stream without a network, or one whose files ship in a
        # package without a weights key (dlib's: their sha256 are compared between feature
        # files, check_features)
        if spec.weights:  # the first key is the network's, the optional ones add files (VGGish's PCA)
            paths = spec.weight_paths(config)
            main = next(iter(spec.weights))
            if paths.get(main) is None:
                entry.update(weights=RANDOM_INIT, weights_sha256=RANDOM_INIT, weights_seed=seed)
            else:
                entry.update(weights=str(paths[main]),
                             weights_sha256=sha256(paths[main]) if needs_hash(stream) else None, weights_seed=-1)
            for key in spec.optional_weights:
                if paths.get(key) is not None:
                    prefix = f"{key.removeprefix(main + '_')}_"
                    entry.update({f"{prefix}weights": str(paths[key]),
                                  f"{prefix}weights_sha256": sha256(paths[key]) if needs_hash(stream, prefix)
                                  else None})
        streams[stream] = entry
    return {"format": RECORD_FORMAT, "streams": streams}


def cached_sha256(path: str | Path, cache: str | Path | None) -> str:
    """sha256 of ``path``, remembered in the JSON file ``cache`` under the file's identity
    (real path, device, inode, size, mtime and ctime in ns: a file rewritten, replaced or
    touched is hashed again; ctime cannot be set back). A cache that cannot be read or
    written is ignored."""
    from vafusion.weights import sha256sum

    st = os.stat(path)
    real = os.path.realpath(path)
    key = "|".join(map(str, (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    table: dict[str, str] = {}
    if cache is not None:
        try:
            table = json.loads(Path(cache).read_text())
        except (OSError, ValueError):
            table = {}
        if isinstance(table, dict) and isinstance(table.get(key), str):
            return table[key]
    digest = sha256sum(path)
    if cache is not None:
        table = {k: v for k, v in (table if isinstance(table, dict) else {}).items() if not k.startswith(real + "|")}
        table[key] = digest
        with contextlib.suppress(OSError), atomic_output(cache) as tmp:
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return digest


def _files(paths: list[Path]) -> str:
    more = len(paths) - 1
    return f"{paths[0]}" + (f" and {more} more model file{'s' if more > 1 else ''}" if more else "")


def trained_run_problems(trained_run: str | Path, model_paths: Iterable[str | Path], config: dict, *,
                         sha256_cache: str | Path | None = None) -> str | None:
    """What stops a run with ``learning.trained_run``: the models' record against the
    features this config makes. None when every model was trained on the same features."""
    records = {Path(p): read_record(p) for p in model_paths}
    if unrecorded := [p for p, r in records.items() if r is None]:
        return (f"learning.trained_run '{trained_run}': {_files(unrecorded)} "
                f"{'keeps' if len(unrecorded) == 1 else 'keep'} no record of the features the "
                f"models were trained on (trained by a vafusion before feature records were kept), so this run's "
                f"feature settings and weights cannot be checked against them. Train the models again with this "
                f"version (run the training config: the record is written with every model.pt), then predict.")
    current = config_record(config, lambda path: cached_sha256(path, sha256_cache), records.values())
    groups: dict[tuple[str, ...], list[Path]] = {}
    for path, record in records.items():
        if lines := tuple(format_differences(record_differences(record, current))):
            groups.setdefault(lines, []).append(path)
    if not groups:
        return None
    parts = [f"learning.trained_run '{trained_run}': the models were trained on other features than this run "
             f"makes; their predictions would be meaningless:"]
    for lines, paths in groups.items():
        parts += [*lines, f"  (recorded in {_files(paths)})"]
    parts.append(f"Use the training run's feature settings and weights (its configuration: {trained_run}/reports/"
                 f"config.yaml), or train models on these features.")
    return "\n".join(parts)


def check_features(model_paths: Iterable[str | Path], aligned_paths: Iterable[str | Path]) -> None:
    """The prediction job's own check: the test trials' aligned features against every
    model's record (the files themselves, not the config: a feature file left from other
    settings is caught too). Raises ValueError."""
    aligned_paths = list(aligned_paths)
    for path in model_paths:
        record = read_record(path)
        if record is None:
            raise ValueError(f"{path}: keeps no record of the features it was trained on (trained by an older "
                             f"vafusion); train it again")
        here = aligned_record(aligned_paths, record["streams"])
        if differences := record_differences(record, here, all_keys=True):
            raise ValueError(f"{path} was trained on other features than the test trials':\n"
                             + "\n".join(format_differences(differences)))
