"""The config's schema: ``workflow/schemas/config.schema.yaml`` for everything but the
feature streams, whose settings (``features.<stream>``) and weights keys (``weights.<key>``)
come from their registry entries (``vafusion.features.registry``), a plug-in's included.
So a new stream is its module and its entry: no edit of the schema or of config.yaml.

``validate`` fills in the schema's defaults, as Snakemake's ``validate`` does, on a
schema built here rather than read from a file.

This module imports nothing heavy: the Snakefile calls it at every parse.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from vafusion.features import registry


class ConfigError(ValueError):
    """The config does not fit its schema; the message names the key."""


def config_schema(base: str | Path | dict, config: dict) -> dict:
    """The schema of ``config``: ``base`` (a schema file, or its contents) with every known
    stream's settings and weights keys (``config``'s plug-ins loaded first: they add streams).
    A stream's section is required only where its schema requires a setting."""
    schema = copy.deepcopy(base) if isinstance(base, dict) else yaml.safe_load(Path(base).read_text())
    features = schema["properties"]["features"]
    weights = schema["properties"]["weights"]
    # a face model's entry (features.face_models.<name>): the registry's schema, defaults included
    features["properties"]["face_models"]["additionalProperties"] = copy.deepcopy(registry.builtin_schema("face_model"))
    try:
        registry.load_plugins(config if isinstance(config, dict) else None)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for stream in registry.streams().values():  # built in and registered (the config's own: below)
        for key, what in stream.weights.items():
            weights["properties"].setdefault(key, {"description": what, "type": ["string", "null"], "default": None})
        if stream.schema is None:
            continue
        section = {"description": stream.description, **copy.deepcopy(stream.schema)}
        if section.get("required"):
            features["required"] = list(dict.fromkeys([*features.get("required", []), stream.name]))
        else:
            section.setdefault("default", {})
        features["properties"][stream.name] = section
    return schema


def _validator(schema: dict):
    """A Draft 2020-12 validator that also sets each missing property's default (a copy),
    before validating the object it belongs to, so that nested defaults are filled too."""
    import jsonschema
    from jsonschema import Draft202012Validator

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):
        if validator.is_type(instance, "object"):
            for name, prop in props.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from check_properties(validator, props, instance, subschema)

    return jsonschema.validators.extend(Draft202012Validator, {"properties": properties})(schema)


def validate(config: dict, schema: dict) -> None:
    """Check ``config`` against ``schema`` and fill its defaults, in place; raises
    ``ConfigError`` naming the key of the first problem found (the deepest one)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(the config's top level)"
        raise ConfigError(f"config key {key}: {error.message}")
