# Config validation, the experiment grid (from the method registry), input functions, targets.
import json
import math
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

from dpdeepsets import methods as M
from dpdeepsets.config import (ConfigError, check_consistency, check_own_data, check_paths,
                               check_tuned, class_histogram_enabled, describe_validation_error,
                               tuned_context)
from dpdeepsets.io import format_epsilon

min_version("9.0")


# One line naming the key (Snakemake's own message prints the section's whole schema), then
# the cross-key checks the schema cannot express and the input paths; all before any job.
try:
    validate(config, "../schemas/config.schema.yaml")
    check_consistency(config)
    check_paths(config)
    check_own_data(config)
    check_tuned(config)
except WorkflowError as exc:
    cause = exc.__context__  # the jsonschema ValidationError that validate() caught
    if not hasattr(cause, "absolute_path"):
        raise
    raise WorkflowError(f"config error: {describe_validation_error(cause)}") from None
except ConfigError as exc:
    raise WorkflowError(f"config error: {exc}") from None


# Jobs run the stage scripts by the workflow's own path (so --directory and use as a module
# work) with the interpreter that runs Snakemake (the project's venv: the supported
# deployment, docs/operations.md#deployment), except under --use-conda, where each job's
# own conda env (ENV: the same pinned set and the package) must come first on its PATH.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
if not USE_CONDA:
    shell.prefix(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; ")
SCRIPTS = os.path.join(workflow.basedir, "workflow", "scripts")
ENV = "../envs/dpdeepsets.yaml"

R = config["results_dir"]
THREADS = config["threads"]
THREADS_HEAVY = config["threads_heavy"]
THREADS_BASE = config["threads_base"]
# The DP-DeepSets chain (embedder -> k-NN subsets -> LoRA bank -> hypernetwork -> releases)
# is the critical path: among ready jobs Snakemake starts it before the baselines and the
# sampling that can fill the gaps (a rule's priority does not pass to its inputs' rules, so
# every rule of the chain carries it).
PRIORITY_CRITICAL = 10


def stage_resources(stage):
    """A rule's `resources:` from its stage class in config `resources` (see the schema).
    cpus_per_task = null is left out, so the SLURM executor asks for the rule's threads.
    """
    return {k: v for k, v in config["resources"][stage].items() if v is not None}


def settings(*sections, untuned=False):
    """The config sections a script reads, as one shell-quoted JSON argument.
    Passing them as params means a changed section reruns exactly the rules that read it.
    ``untuned``: without baselines.tuned (the tuning jobs search around the defaults, so
    pasting their result into the config must not rerun them).
    """
    chosen = {s: config[s] for s in sections}
    if "baselines" in chosen:  # tuned_for is checked when the config loads; it changes no fit
        drop = {"tuned_for", "tuned"} if untuned else {"tuned_for"}
        chosen["baselines"] = {k: v for k, v in chosen["baselines"].items() if k not in drop}
    if "private_evolution" in chosen and untuned:
        chosen["private_evolution"] = {k: v for k, v in chosen["private_evolution"].items() if k != "tuned"}
    return shlex.quote(json.dumps(chosen, sort_keys=True))


# The secret noise key of every DP release and DP-SGD fit (dpdeepsets.noise): the user's file,
# or one created on first use inside the results directory (a fresh run gets fresh noise).
# privacy.noise=secure needs none (fresh OS entropy per release).
NOISE_KEY = config["privacy"]["key_file"] or f"{R}/.secret/noise.key"
KEYED = config["privacy"]["noise"] == "keyed"


def key_input(wildcards):
    return {"key": NOISE_KEY} if KEYED else {}


def key_flag(wildcards, input):
    return f"--key {input.key}" if "key" in input.keys() else ""

# ---------------------------------------------------------------- the grid

PSETS = [f"p{i}" for i in range(config["subsets"]["num_private"])]
SEEDS = config["evaluation"]["seeds"]
METHODS = config["evaluation"]["methods"]
FINITE_EPSILONS = [format_epsilon(e) for e in config["privacy"]["epsilons"]]
NONPRIVATE_REFERENCE = config["privacy"]["nonprivate_reference"]
N_SHARDS = math.ceil(config["subsets"]["num_public"] / config["lora"]["shard_size"])
SET_SIZE = config["subsets"]["set_size"]


def method_epsilons(method):
    return M.get(method).epsilons(FINITE_EPSILONS, NONPRIVATE_REFERENCE)


def method_psets(method):
    return PSETS if M.get(method).per_set else ["all"]


def cells():
    """Every evaluated (method, pset, eps, seed); public-only methods have pset 'all', eps 0."""
    for method in METHODS:
        for pset in method_psets(method):
            for seed in SEEDS:
                for eps in method_epsilons(method):
                    yield method, pset, eps, seed


def methods_where(pred):
    """Evaluated methods whose registry entry satisfies ``pred``."""
    return [m for m in METHODS if pred(M.get(m))]


def alternatives(names):
    """A wildcard constraint matching exactly ``names`` (never matching when empty)."""
    return "|".join(names) if names else "(?!x)x"


GRID = methods_where(lambda m: m.has_grid)  # one job per (method, set, seed) over FINITE_EPSILONS
EVOLVED = methods_where(lambda m: m.producer == "evolve")  # samples made by their own DP rule
SAMPLED_GRID = [m for m in GRID if m not in EVOLVED]  # grid methods whose adapters rule sample samples
RELEASE_METHODS = methods_where(lambda m: m.privacy == "dp_release")
GENERATED = methods_where(lambda m: m.producer == "generate")
FITTED_DP = methods_where(lambda m: m.privacy == "dp_sgd")
PUBLIC_ONLY = methods_where(lambda m: m.privacy == "public_only")


def per_epsilon(template):
    """``template`` (with a literal ``{eps}``) at every finite epsilon, other wildcards kept."""
    return [template.replace("{eps}", e) for e in FINITE_EPSILONS]


CELL = "{method}/{pset}/eps{eps}_seed{seed}"


def adapter_path(method, pset, eps, seed):
    return f"{R}/adapters/{method}/{pset}/eps{eps}_seed{seed}"


def sample_path(method, pset, eps, seed):
    return f"{R}/samples/{method}/{pset}/eps{eps}_seed{seed}.npz"


def features_path(method, pset, eps, seed):
    return f"{R}/features/{method}/{pset}/eps{eps}_seed{seed}.npz"


def release_path(pset, eps, seed):
    return f"{R}/release/{pset}/eps{eps}_seed{seed}.json"


def ledger_path(method, pset, eps, seed):
    return f"{R}/ledger/{method}/{pset}/eps{eps}_seed{seed}.json"


# ---------------------------------------------------------------- input functions

def generator_inputs(wildcards):
    """Public inputs of a generated adapter (the bank, the hypernetwork, the subsets' means)."""
    m = M.get(wildcards.method)
    extra = {}
    if m.needs_bank:
        extra["bank"] = f"{R}/lora/public_loras.safetensors"
    if m.needs_subset_means:
        extra.update(embeddings=f"{R}/embeddings/public.npy", subsets=f"{R}/subsets/public.npz")
    if m.needs_hypernet:
        extra["hypernet"] = f"{R}/hypernet/hypernet.pt"
    return extra


def generator_flags(wildcards, input):
    return " ".join(f"--{k} {input[k]}" for k in ("bank", "embeddings", "subsets", "hypernet")
                    if k in input.keys())


# Tuning inside the DAG (baselines.tuning.auto): with no tuned values in the config, the tuned
# methods read what rule tune_baselines chooses for this config (docs/own_data.md).
TUNED_FILE = f"{R}/tuning/chosen.yaml"
AUTO_TUNE = config["baselines"]["tuning"]["auto"]
AUTO_TUNED_FITS = AUTO_TUNE and not config["baselines"]["tuned"]
AUTO_TUNED_PE = AUTO_TUNE and not config["private_evolution"]["tuned"]


def tuned_input(wildcards):
    m = M.get(wildcards.method)
    auto = ((m.producer == "fit_baseline" and not m.bank_recipe and AUTO_TUNED_FITS)
            or (m.producer == "evolve" and AUTO_TUNED_PE))
    return {"tuned": TUNED_FILE} if auto else {}


def tuned_flag(wildcards, input):
    return f"--tuned {input.tuned}" if "tuned" in input.keys() else ""


def baseline_inputs(wildcards):
    """Public inputs a gradient fit needs beyond the base model and the private set."""
    m = M.get(wildcards.method)
    extra = {}
    if m.public_start:
        extra["public_lora"] = f"{R}/adapters/public_pool_lora"
    if m.public_gradient:
        extra["public"] = f"{R}/data/public.npz"
    return extra


def baseline_flags(wildcards, input):
    flags = []
    if "public_lora" in input.keys():
        flags.append(f"--public-lora {input.public_lora}")
    if "public" in input.keys():
        flags.append(f"--public {input.public}")
    return " ".join(flags)


def sample_inputs(wildcards, eps_list):
    """The adapters a sample job reads (none for a method without one: the base model)."""
    if M.get(wildcards.method).producer is None:
        return {}
    pset = getattr(wildcards, "pset", "all")
    return {"adapters": [adapter_path(wildcards.method, pset, e, wildcards.seed)
                         for e in eps_list]}


def adapter_flag(wildcards, input):
    return f"--adapter {' '.join(input.adapters)}" if "adapters" in input.keys() else ""


def classifier_input(wildcards):
    return {"classifier": f"{R}/eval/digit_classifier.npz"} if CLASS_HISTOGRAM else {}


def classifier_flag(wildcards, input):
    return f"--classifier {input.classifier}" if "classifier" in input.keys() else ""


def _sample_inputs(eps_list):
    def inputs(wildcards):
        out = {"base": f"{R}/base", **sample_inputs(wildcards, eps_list), **classifier_input(wildcards)}
        out.update(inception_input(wildcards))
        return out

    return inputs


SAMPLE_SHELL = (
    f"python {SCRIPTS}/sample.py --settings {{params.settings}} --threads {{threads}}"
    " --base {input.base} {params.adapter} {params.classifier} {params.inception}"
    " --seed {wildcards.seed} --out {output.samples} --out-grid {output.grids}"
    " --out-features {output.features} > {log} 2>&1"
)


CLASS_HISTOGRAM = class_histogram_enabled(config)  # auto: on when both pools carry labels
# The ONNX export of the Inception network (rule inception_onnx), for the fast CPU runtime.
INCEPTION_CACHE = f"{R}/cache/inception"
USE_ONNX = config["evaluation"]["inception_runtime"] in ("auto", "onnxruntime")


def inception_input(wildcards):
    return {"inception": INCEPTION_CACHE} if USE_ONNX else {}


def inception_flag(wildcards, input):
    runtime = config["evaluation"]["inception_runtime"]
    cache = f" --inception-cache {input.inception}" if "inception" in input.keys() else ""
    return f"--inception-runtime {runtime}{cache}"

# ---------------------------------------------------------------- targets

FEATURE_FILES = sorted({features_path(*c) for c in cells()})
RELEASE_FILES = sorted({release_path(p, e, s) for m, p, e, s in cells() if m in RELEASE_METHODS})
FIT_LEDGER_FILES = sorted({ledger_path(m, p, e, s) for m, p, e, s in cells()
                           if M.get(m).producer in ("fit_baseline", "evolve")})
SCORE_FILES = [f"{R}/eval/scores/{m}.csv" for m in METHODS]

# The released sample figure shows DP and public-only cells only: epsilon = inf cells are
# non-private references and stay out of anything public-facing.
FIGURE_EPSILON = format_epsilon(config["evaluation"]["figure_epsilon"])
FIGURE_SAMPLE_FILES = sorted({sample_path(m, p, e, s) for m, p, e, s in cells()
                              if M.get(m).in_figure and e != "inf"
                              and (not M.get(m).has_grid or e == FIGURE_EPSILON
                                   or m == "dpdeepsets")})
REPORT_OUTPUTS = [f"{R}/{name}" for name in (
    "metrics.csv", "summary.csv", "specificity.csv", "privacy_ledger.csv", "privacy_budget.csv",
    "fid_vs_epsilon.png", "kid_vs_epsilon.png", "specificity.png", "samples.png",
    "samples_vs_epsilon.png")]


wildcard_constraints:
    method="[a-z_]+",
    pset=r"p\d+|all",
    eps=r"inf|[0-9][0-9.e+-]*",
    seed=r"\d+",
    shard=r"\d+",
    pool="public|validation|private",


# tune_baselines_proxy (rules/tuning.smk)
def tuning_inputs(wildcards):
    m = M.get(wildcards.method)
    if m.producer == "evolve":  # votes of the proxy set's embeddings, the public embedder
        return {"embeddings": f"{R}/embeddings/validation.npy",
                "projection": f"{R}/embedder/projection.npz"}
    return baseline_inputs(wildcards) if m.producer == "fit_baseline" else {}


def tuning_flags(wildcards, input):
    flags = [f"--{k} {input[k]}" for k in ("embeddings", "projection") if k in input.keys()]
    return " ".join(flags + [baseline_flags(wildcards, input)])


def tuning_settings(wildcards):
    """The sections the method's tuning reads (so a change to another method's grid does not
    rerun it), without the tuned values (the search is around the defaults)."""
    producer = M.get(wildcards.method).producer
    extra = {"fit_baseline": ("baselines", "lora"), "evolve": ("private_evolution", "embedder")}
    return settings("privacy", "sampling", "evaluation", "subsets", *extra.get(producer, ()),
                    untuned=True)
