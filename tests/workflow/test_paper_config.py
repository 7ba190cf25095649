"""config/paper.yaml: the whole paper-scale DAG dry-runs on placeholder inputs in the right
formats, with exactly the job counts the config implies; every missing input is named
before any job starts; a sampling change reruns only what depends on it."""

import json
import math
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())

pytestmark = pytest.mark.slow


def _place_inputs(root: Path):
    """Tiny stand-ins, in the formats the real files have, for every input paper.yaml names."""
    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, 20).tolist(),
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(20)]}
        with open(cifar / name, "wb") as fh:
            pickle.dump(batch, fh)
    # ImageNet32 as it is downloaded (pickled batches, labels 1..1000), converted by the
    # command docs/paper.md gives, so that this test runs the converter as a user would.
    batches = root / "Imagenet32_train"
    batches.mkdir()
    for i in range(1, 11):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(batches / f"train_data_batch_{i}", "wb") as fh:
            pickle.dump({"data": data, "labels": rng.integers(1, 1001, 4).tolist(),
                         "mean": data.mean(0)}, fh)
    imagenet = root / "imagenet32" / "train_32x32.npz"
    convert = subprocess.run([sys.executable, "-m", "dpdeepsets.data.imagenet32", str(batches),
                              str(imagenet), "--split", "train"], cwd=ROOT, capture_output=True,
                             text=True)
    assert convert.returncode == 0, convert.stderr[-2000:]
    assert "40 images from 10 file(s)" in convert.stdout, convert.stdout
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(root / "ddpm-32")
    clip = root / "open_clip" / "ViT-B-32.bin"
    clip.parent.mkdir()
    clip.write_bytes(b"placeholder: a dry run never loads the weights")
    return {"cifar": cifar, "imagenet": imagenet, "unet": root / "ddpm-32", "clip": clip}


def _paper_config(tmp_path, paths, **overrides):
    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["data"]["source"]["path"] = str(paths["cifar"])
    cfg["data"]["public_source"]["path"] = str(paths["imagenet"])
    cfg["base"]["pretrained_dir"] = str(paths["unet"])
    cfg["embedder"]["clip_weights"] = str(paths["clip"])
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    out = tmp_path / "paper.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def _dry_run(*args):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=ROOT,
                          capture_output=True, text=True)
    return proc, proc.stdout + proc.stderr


def _job_counts(out):
    counts = {}
    for line in out[out.index("Job stats"):].splitlines()[3:]:  # title, header, rule line
        if line.startswith("total"):
            break
        rule, n = line.split()
        counts[rule] = int(n)
    return counts


def expected_counts(cfg):
    """The job count of every rule, from the config and the method registry alone.

    A method with an epsilon grid has one job per (method, private set, seed) covering the
    whole finite grid (release_embedding per set and seed, generate_lora / fit_baseline /
    sample per method, set and seed); the epsilon = inf reference cells have jobs of their own
    (release_reference, generate_lora_reference, sample_reference, fit_nonprivate); a
    public-only method has one cell per seed; scoring is one job per method. Private
    Evolution's rule makes its samples itself (one job per set and seed, every finite epsilon).
    """
    from dpdeepsets import methods as M

    psets, seeds = cfg["subsets"]["num_private"], len(cfg["evaluation"]["seeds"])
    inf_ref = 1 if cfg["privacy"]["nonprivate_reference"] else 0
    methods = [M.get(m) for m in cfg["evaluation"]["methods"]]
    release = [m for m in methods if m.privacy == "dp_release"]
    dp_sgd = [m for m in methods if m.privacy == "dp_sgd"]
    evolved = [m for m in methods if m.producer == "evolve"]  # samples from their own DP rule
    public = [m for m in methods if m.privacy == "public_only"]
    nonprivate = [m for m in methods if m.privacy == "nonprivate"]
    per_set = psets * seeds
    counts = {
        "prepare_data": 1, "pretrain_base": 1, "fit_embedder": 1,
        "noise_key": 0 if cfg["privacy"].get("key_file") else 1,
        "embed": 3, "build_subsets": 3,  # public, validation (proxy sets) and private pool
        "fit_bank_shard": math.ceil(cfg["subsets"]["num_public"] / cfg["lora"]["shard_size"]),
        "gather_bank": 1, "train_hypernet": 1,
        "release_embedding": per_set if release else 0,
        "release_reference": per_set * inf_ref if release else 0,
        "generate_lora": len(release) * per_set,
        "generate_lora_reference": len(release) * per_set * inf_ref,
        "generate_public": len([m for m in public if m.producer == "generate"]) * seeds,
        "fit_public_pool_lora": 1 if any(m.public_start for m in dp_sgd) else 0,
        "fit_baseline": len(dp_sgd) * per_set,
        "fit_nonprivate": len(nonprivate) * per_set,
        "private_evolution": len(evolved) * per_set,
        "sample": (len(release) + len(dp_sgd)) * per_set,
        "sample_reference": (len(release) * inf_ref + len(nonprivate)) * per_set,
        "sample_public": len(public) * seeds,
        "inception_onnx": 1 if cfg["evaluation"].get("inception_runtime", "auto") != "torch" else 0,
        "fit_digit_classifier": 1 if cfg["evaluation"].get("class_histogram", True) else 0,
        "private_set_features": 1, "score": len(methods),
        "report": 1, "sample_figure": 1, "all": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory):
    return _place_inputs(tmp_path_factory.mktemp("paper_inputs"))


def test_paper_config_is_the_papers_setting():
    assert PAPER["data"]["source"]["kind"] == "cifar10" and PAPER["subsets"]["set_size"] == 128
    assert PAPER["privacy"]["epsilons"] == [2.0 ** k for k in range(-2, 11)]
    assert PAPER["privacy"]["delta"] == 1e-5 and len(PAPER["evaluation"]["seeds"]) == 3
    from dpdeepsets import methods as M

    assert set(PAPER["evaluation"]["methods"]) == set(M.REGISTRY)
    assert PAPER["embedder"]["backend"] == "open_clip" and PAPER["embedder"]["clip_model"] == "ViT-B-32"
    assert all(PAPER["resources"][c]["gpu"] == 1 for c in ("gpu_train", "sampling", "encoder"))


def test_paper_dag_job_counts(placeholders, tmp_path):
    cfg_file = _paper_config(tmp_path, placeholders)
    proc, out = _dry_run("--configfile", str(cfg_file))
    assert proc.returncode == 0, out[-4000:]
    counts = _job_counts(out)
    expected = expected_counts(yaml.safe_load(cfg_file.read_text()))
    print("\n".join(f"{rule:20s} {n:6d}" for rule, n in counts.items()))
    assert counts == expected
    # Jobs of the GPU stage classes ask for one GPU (the SLURM profile's --gpus=1; the
    # hypernetwork trains through the UNet end to end), the release (CPU) for none.
    gpus = {}
    for block in out.split("\nrule ")[1:]:
        m = re.search(r"resources: .*\bgpu=(\d+)", block)
        gpus.setdefault(block.split(":")[0], set()).add(int(m.group(1)) if m else 0)
    for rule in ("pretrain_base", "fit_bank_shard", "fit_public_pool_lora", "fit_baseline",
                 "fit_nonprivate", "sample", "sample_reference", "sample_public", "embed",
                 "private_set_features", "train_hypernet", "private_evolution"):
        assert gpus[rule] == {1}, (rule, gpus[rule])
    assert gpus["release_embedding"] == {0}


MISSING = {  # config key: (placeholder removed, what the message must say)
    "data.source.path": ("cifar/test_batch", r"data\.source\.path .*missing CIFAR-10 batch file\(s\) test_batch: place the extracted CIFAR-10 python version \(cifar-10-batches-py from https://www\.cs\.toronto\.edu"),
    "data.public_source.path": ("imagenet", r"data\.public_source\.path .*train_32x32\.npz is not a file: place an \.npz with an `images` array uint8 \[N,H,W,C\]"),
    "base.pretrained_dir": ("unet/config.json", r"base\.pretrained_dir .*holds no diffusers UNet .*place a UNet2DModel saved with save_pretrained, or a DDPMPipeline directory .*google/ddpm-cifar10-32"),
    "embedder.clip_weights": ("clip", r"embedder\.clip_weights .*is not a file: place the open_clip checkpoint for ViT-B-32 there .*laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
}


@pytest.mark.parametrize("key", list(MISSING))
def test_missing_input_named_before_any_job(placeholders, tmp_path, key):
    """A missing input stops the run before any job starts, naming the key and what to place."""
    remove, message = MISSING[key]
    local = tmp_path / "inputs"
    shutil.copytree(placeholders["cifar"].parent, local)
    paths = {"cifar": local / "cifar-10-batches-py", "imagenet": local / "imagenet32/train_32x32.npz",
             "unet": local / "ddpm-32", "clip": local / "open_clip/ViT-B-32.bin"}
    what, _, rest = remove.partition("/")
    target = paths[what] / rest if rest else paths[what]
    target.unlink()
    proc, out = _dry_run("--configfile", str(_paper_config(tmp_path, paths)))
    assert proc.returncode != 0
    assert re.search("config error: " + message, out), out[-3000:]
    assert "Job stats" not in out and "rule " not in out  # no job was even planned


def test_sampling_change_reruns_only_downstream(placeholders, tmp_path):
    """On the paper DAG (fewer sets, epsilons and seeds, to keep it quick): only the rules
    that sample are given the sampling settings (Private Evolution samples in its own DP
    rule), and once every output exists, rerunning them replans only what consumes samples. (tests/workflow/test_pipeline.py checks the same through Snakemake's
    params trigger on a real run of the tiny config.)"""
    small = {"subsets.num_private": 2, "privacy.epsilons": [1, 1024], "evaluation.seeds": [0]}
    base_cfg = _paper_config(tmp_path, placeholders, **small)
    proc, out = _dry_run("--configfile", str(base_cfg), "--printshellcmds")
    assert proc.returncode == 0, out[-3000:]
    readers = set()
    for block in out.split("\nrule ")[1:]:
        m = re.search(r"--settings '(\{.*?\})'", block)
        if m and "sampling" in json.loads(m.group(1)):
            readers.add(block.split(":")[0])
    samplers = ("sample", "sample_reference", "sample_public", "private_evolution")
    assert readers == set(samplers), readers
    _materialise(out)
    touch = subprocess.run([sys.executable, "-m", "snakemake", "--touch", "--cores", "1",
                            "--configfile", str(base_cfg)], cwd=ROOT, capture_output=True, text=True)
    assert touch.returncode == 0, (touch.stdout + touch.stderr)[-3000:]
    proc, out = _dry_run("--configfile", str(base_cfg), "--forcerun", *samplers)
    assert proc.returncode == 0, out[-3000:]
    counts = _job_counts(out)
    expected = expected_counts(yaml.safe_load(base_cfg.read_text()))
    assert counts == {rule: expected[rule] for rule in
                      (*samplers, "score", "report", "sample_figure", "all")}, counts


def _materialise(dry_run_out: str):
    """Create every output the dry run lists (empty files / directories) so --touch can mark them."""
    for block in dry_run_out.split("\nrule ")[1:]:
        m = re.search(r"\n    output: (.*)", block)
        if not m:
            continue
        rule = block.split(":")[0]
        for path in m.group(1).split(", "):
            p = Path(path)
            if rule in ("pretrain_base", "fit_public_pool_lora", "generate_lora",
                        "generate_lora_reference", "generate_public") or (
                    rule in ("fit_baseline", "fit_nonprivate") and p.suffix != ".json"):
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
