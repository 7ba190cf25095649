"""Load and validate a pipeline config against ``config/schema.yaml`` (defaults filled in).

Snakemake validates with ``snakemake.utils.validate`` against the same schema; this module
serves scripts run by hand (``--configfile``) and the tests.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """The config file is malformed or does not match the schema."""


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def fill(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = _copy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": fill})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_config(config: dict) -> dict:
    """Fill defaults into ``config`` (in place) and validate it; returns it."""
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "<top level>"
        raise ConfigError(f"config key {where}: {e.message}")
    return config


def load_config(path: str | Path | None = None) -> dict:
    """Read a YAML config (or none: all defaults) and validate it."""
    if path is None:
        return validate_config({})
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return validate_config(data)
