"""The bad-input catalogue (docs/operations.md): every entry stops with one line that
names the problem and the place, a non-zero exit, and no artifact.

Config problems are caught by Snakemake before any job starts (`snakemake -n` on a temp
config; checked: exit status, a `config error:` line naming the key, no results directory).
Data problems are caught by the stage that reads the data (the stage script run by hand;
checked: exit status 2, exactly one `error:` line naming the file or key, no traceback, no
output and no temp file written, an earlier output left as it was).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


# ----------------------------------------------------------------------------- helpers
def dry_run(tmp_path, text):
    """`snakemake -n` with ``text`` as an extra config file; results would go under tmp."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"results_dir: {tmp_path / 'results'}\n{text}")
    proc = subprocess.run([PY, "-m", "snakemake", "-n", "--configfile", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not (tmp_path / "results").exists()
    return proc.stdout + proc.stderr


def config_error_line(out):
    lines = [ln for ln in out.splitlines() if ln.startswith("config error:")]
    assert len(lines) == 1, out[-3000:]
    assert len(out.splitlines()) < 10, out  # no schema dump
    return lines[0]


def run_stage(script, *args):
    return subprocess.run([PY, f"workflow/scripts/{script}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def one_error_line(proc):
    """Exit status 2 and exactly one `error:` line, the last line of stderr."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


def nothing_written(*outputs):
    for out in outputs:
        out = Path(out)
        assert not out.exists(), out
        assert not list(out.parent.glob(f".{out.name}*")), list(out.parent.iterdir())


def yaml_config(tmp_path, cfg, name="stage.yaml"):
    f = tmp_path / name
    f.write_text(yaml.safe_dump(cfg))
    return f


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def gray(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ------------------------------------------------------------- config: before any job
# (entry, config text, what the config error line must contain)
CONFIG_CASES = [
    ("unknown key", "lora: {rnak: 4}\n", ["lora.rnak", "unknown key", "rank"]),
    ("epsilon zero", "privacy: {epsilons: [0, 1]}\n", ["privacy.epsilons.0", "minimum of 0"]),
    ("empty epsilon list", "privacy: {epsilons: []}\n", ["privacy.epsilons", "non-empty"]),
    ("delta above one", "privacy: {delta: 1.5}\n", ["privacy.delta", "1.5", "maximum of 1"]),
    ("delta as string", "privacy: {delta: 1e-5}\n", ["privacy.delta", "write 1.0e-5"]),
    ("unknown method", "evaluation: {methods: [dpdeepsets, dp_sgd]}\n",
     ["evaluation.methods.1", "'dp_sgd' is not a registered method", "dpsgd"]),
    ("replace-one with DP-SGD", "privacy: {adjacency: replace_one}\n",
     ["privacy.adjacency=replace_one", "add_remove only", "dpsgd"]),
    ("missing key file", "privacy: {key_file: /nonexistent/noise.key}\n",
     ["privacy.key_file /nonexistent/noise.key does not exist", "new-key"]),
    ("the old seeded noise", "privacy: {noise: seeded}\n", ["privacy.noise", "'seeded' is not one of"]),
    ("no private sets", "subsets: {num_private: 0}\n", ["subsets.num_private", "minimum of 1"]),
    ("set larger than private pool", "subsets: {set_size: 1600}\n",
     ["subsets.set_size=1600", "private pool (1500 images"]),
    ("disjoint sets exceed private pool", "subsets: {set_size: 600}\n",
     ["subsets.num_private=3 disjoint sets", "need 1800 images", "private pool has 1500",
      "subsets.disjoint: false"]),
    ("k larger than public pool", "data: {public_fraction: 0.05, validation_size: 200}\n",
     ["subsets.set_size=128", "public pool (50 images", "data.public_fraction"]),
    ("validation as large as the private pool leaves no public pool",
     "data: {public_fraction: 0.01}\n",
     ["data.validation_size=private (4950, the private pool)", "leaves no public pool"]),
    ("missing clip weights", "embedder: {backend: open_clip, clip_weights: /nonexistent/clip.bin}\n",
     ["embedder.clip_weights", "/nonexistent/clip.bin"]),
    ("missing pretrained base", "base: {pretrained_dir: /nonexistent/unet}\n",
     ["base.pretrained_dir", "/nonexistent/unet", "or set it to null to pretrain"]),
    ("missing data file", "data: {source: {kind: npz, path: /nonexistent/pool.npz}}\n",
     ["data.source.path", "/nonexistent/pool.npz"]),
]


@pytest.mark.parametrize("text, needles", [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_config_refused_before_any_job(tmp_path, text, needles):
    line = config_error_line(dry_run(tmp_path, text))
    for needle in needles:
        assert needle in line, line


# More config entries. They go through the same schema and dpdeepsets.config.check_consistency
# that Snakemake runs (wired up above), so they are checked in-process: a dry run costs ~2 s.
MORE_CONFIG_CASES = [
    ("epsilon negative", "privacy: {epsilons: [1, -2]}", ["privacy.epsilons.1", "-2"]),
    ("epsilon infinite", "privacy: {epsilons: [1, .inf]}",
     ["privacy.epsilons.1 is inf", "must be finite", "privacy.nonprivate_reference"]),
    ("epsilon listed twice", "privacy: {epsilons: [1, 4, 1.0]}",
     ["privacy.epsilons [1, 4, 1.0]", "1.0 repeats 1", "cell eps1", "list each epsilon once"]),
    ("delta one", "privacy: {delta: 1.0}", ["privacy.delta", "maximum of 1"]),
    ("unknown source key", "data: {public_source: {kind: npz, pth: x.npz}}",
     ["data.public_source.pth", "unknown key", "kind, path, split"]),
    ("unknown top-level key", "privcy: {delta: 1.0e-6}", ["privcy: unknown key", "privacy"]),
    ("heads do not divide width", "hypernet: {d_model: 60, heads: 8}",
     ["hypernet.heads=8", "hypernet.d_model=60"]),
    ("image size vs UNet depth", "data: {image_size: 18}",
     ["data.image_size=18", "divisible by 4", "base.block_out_channels"]),
    ("attention level out of range", "base: {block_out_channels: [32, 64]}",
     ["base.attention_levels [1, 2]", "level 2 does not exist"]),
    ("norm groups", "base: {norm_num_groups: 12}", ["base.norm_num_groups=12", "does not divide"]),
    ("wrong type", "subsets: {set_size: many}", ["subsets.set_size", "'many' is not of type 'integer'"]),
]


@pytest.mark.parametrize("text, needles", [c[1:] for c in MORE_CONFIG_CASES],
                         ids=[c[0] for c in MORE_CONFIG_CASES])
def test_more_config_entries(tmp_path, text, needles):
    from dpdeepsets.config import ConfigError, load_config

    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    line = str(info.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line


def test_malformed_yaml(tmp_path):
    out = dry_run(tmp_path, "privacy: {epsilons: [1, 2\n")
    assert "Config file is not valid JSON or YAML" in out  # Snakemake's own words, before our code
    # ... so the config checker (and every stage script's --configfile) names file and line.
    bad = tmp_path / "bad.yaml"
    proc = subprocess.run([PY, "-m", "dpdeepsets.config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    line = one_error_line(proc)
    assert f"{bad}, line 3" in line and "not valid YAML" in line


# ------------------------------------------------------------- data: prepare_data
def prepare(tmp_path, source, public_source=None):
    # split_source: these tests reach the reader's checks, not the own-data refusal
    cfg = yaml_config(tmp_path, {"data": {"source": source, "public_source": public_source,
                                          "split_source": True, "image_size": 8}})
    out = tmp_path / "out"
    proc = run_stage("prepare_data.py", "--configfile", cfg, "--out-public", out / "public.npz",
                     "--out-validation", out / "validation.npz", "--out-private", out / "private.npz",
                     "--out-summary", out / "summary.json")
    line = one_error_line(proc)
    nothing_written(out / "public.npz", out / "validation.npz", out / "private.npz",
                    out / "summary.json")
    return line


def test_image_folder_mixed_sizes(tmp_path):
    png(tmp_path / "imgs" / "a.png", gray(1, 8)[0])
    png(tmp_path / "imgs" / "b.png", gray(1, 10)[0])
    line = prepare(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "imgs")})
    assert "b.png" in line and "10x10" in line and "differs from 8x8" in line


def test_image_folder_corrupt_png(tmp_path):
    png(tmp_path / "imgs" / "a.png", gray(1)[0])
    good = (tmp_path / "imgs" / "a.png").read_bytes()
    (tmp_path / "imgs" / "b.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    line = prepare(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "imgs")})
    assert "b.png" in line and "corrupt or unreadable image" in line


def test_image_folder_without_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    line = prepare(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "imgs")})
    assert str(tmp_path / "imgs") in line and "no image files" in line


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "pool.npz", images=gray(64)[..., None])
    raw = (tmp_path / "pool.npz").read_bytes()
    (tmp_path / "pool.npz").write_bytes(raw[: len(raw) // 2])
    line = prepare(tmp_path, {"kind": "npz", "path": str(tmp_path / "pool.npz")})
    assert "pool.npz" in line and "not a readable .npz" in line


def test_npz_labels_length_mismatch(tmp_path):
    np.savez(tmp_path / "pool.npz", images=gray(20)[..., None], labels=np.arange(19))
    line = prepare(tmp_path, {"kind": "npz", "path": str(tmp_path / "pool.npz")})
    assert "pool.npz ['labels']" in line and "shape [20]" in line


def test_npz_wrong_dtype(tmp_path):
    np.savez(tmp_path / "pool.npz", images=gray(20)[..., None].astype(np.float32) / 255)
    line = prepare(tmp_path, {"kind": "npz", "path": str(tmp_path / "pool.npz")})
    assert "pool.npz ['images']" in line and "dtype uint8" in line and "float32" in line


def test_public_and_private_sources_with_different_channels(tmp_path):
    np.savez(tmp_path / "gray.npz", images=gray(20)[..., None])
    np.savez(tmp_path / "rgb.npz", images=np.repeat(gray(20)[..., None], 3, axis=3))
    line = prepare(tmp_path, {"kind": "npz", "path": str(tmp_path / "gray.npz")},
                   {"kind": "npz", "path": str(tmp_path / "rgb.npz")})
    assert "data.public_source has 3 channels" in line and "data.source has 1" in line


# ------------------------------------------------------------- base model / LoRA
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A saved 16 px, 1-channel base model (diffusers DDPMPipeline layout)."""
    import torch

    from dpdeepsets.diffusion import build_scheduler, build_unet, save_base

    path = tmp_path_factory.mktemp("bases") / "base1"
    torch.manual_seed(0)
    unet = build_unet(image_size=16, channels=1, block_out_channels=(16, 32), layers_per_block=1,
                      attention_levels=[1], norm_num_groups=8, attention_head_dim=8)
    save_base(path, unet, build_scheduler(1000, "squaredcos_cap_v2"))
    return path


def test_rgb_data_with_a_one_channel_pretrained_base(tmp_path, tiny_base):
    from dpdeepsets.data import save_split

    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    save_split(str(tmp_path / "public.npz"), x)
    cfg = yaml_config(tmp_path, {"base": {"pretrained_dir": str(tiny_base)}, "data": {"image_size": 16}})
    out = tmp_path / "base_out"
    line = one_error_line(run_stage("pretrain_base.py", "--configfile", cfg,
                                    "--public", tmp_path / "public.npz", "--out", out))
    assert f"base.pretrained_dir {tiny_base} expects 1 channels but the data has 3" in line
    nothing_written(out)


def test_lora_rank_larger_than_a_target(tmp_path, tiny_base):
    from dpdeepsets.data import atomic_savez, save_split

    save_split(str(tmp_path / "public.npz"), gray(12, 16)[..., None])
    atomic_savez(str(tmp_path / "subsets.npz"), {"anchors": np.arange(2),
                                                 "members": np.arange(12).reshape(2, 6)})
    cfg = yaml_config(tmp_path, {"lora": {"rank": 20}})  # attention projections are 16 x 16
    out = tmp_path / "shard0.safetensors"
    out.write_bytes(b"earlier result")
    line = one_error_line(run_stage("fit_bank_shard.py", "--configfile", cfg, "--base", tiny_base,
                                    "--public", tmp_path / "public.npz", "--subsets",
                                    tmp_path / "subsets.npz", "--shard", 0, "--out", out))
    assert "lora.rank=20 exceeds the dimensions of target" in line and "(out=16" in line
    assert out.read_bytes() == b"earlier result"


# ------------------------------------------------------------- embeddings / subsets / release
def embeddings_file(tmp_path, n=30, d=4, nan_row=None):
    z = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    if nan_row is not None:
        z[nan_row, 1] = np.nan
    p = tmp_path / "emb.npy"
    np.save(p, z)
    return p


def build_subsets(tmp_path, emb, pool, set_size=8, num=2):
    cfg = yaml_config(tmp_path, {"subsets": {"set_size": set_size, "num_public": num,
                                             "num_private": num, "num_validation": num}})
    out = tmp_path / f"{pool}_sets.npz"
    out.write_bytes(b"earlier result")
    line = one_error_line(run_stage("build_subsets.py", "--configfile", cfg, "--embeddings", emb,
                                    "--pool", pool, "--out", out))
    assert out.read_bytes() == b"earlier result"
    assert not list(tmp_path.glob(f".{out.name}*"))
    return line


def test_nan_embeddings_refused_by_build_subsets(tmp_path):
    emb = embeddings_file(tmp_path, nan_row=7)
    line = build_subsets(tmp_path, emb, "public")
    assert str(emb) in line and "NaN or Inf in 1 row(s) (first: row 7)" in line


def test_nan_embeddings_refused_by_the_release(tmp_path):
    emb = embeddings_file(tmp_path, nan_row=25)  # outside the released set: the file is bad
    sets = tmp_path / "sets.npz"
    np.savez(sets, anchors=np.array([0]), members=np.arange(8)[None])
    out = tmp_path / "release.json"
    from dpdeepsets.noise import create_key

    key = create_key(tmp_path / "noise.key")
    line = one_error_line(run_stage("release_embedding.py", "--configfile",
                                    yaml_config(tmp_path, {}), "--embeddings", emb, "--sets", sets,
                                    "--key", key, "--n", 8, "--pset", "p0", "--epsilon", 1,
                                    "--seed", 0, "--out", out))
    assert str(emb) in line and "NaN or Inf" in line
    nothing_written(out)


def test_truncated_embeddings_refused(tmp_path):
    emb = embeddings_file(tmp_path)
    emb.write_bytes(emb.read_bytes()[:-40])
    line = build_subsets(tmp_path, emb, "private")
    assert str(emb) in line and "not a readable .npy" in line


def test_private_set_larger_than_private_pool(tmp_path):
    line = build_subsets(tmp_path, embeddings_file(tmp_path, n=10), "private", set_size=24)
    assert "subsets.set_size=24 is larger than the private pool (10 examples)" in line


def test_k_larger_than_public_pool(tmp_path):
    line = build_subsets(tmp_path, embeddings_file(tmp_path, n=10), "public", set_size=24)
    assert "subsets.set_size=24 is larger than the public pool (10 examples)" in line


def test_world_readable_key_file_refused(tmp_path):
    from dpdeepsets.noise import create_key

    key = create_key(tmp_path / "noise.key")
    key.chmod(0o644)
    line = config_error_line(dry_run(tmp_path, f"privacy: {{key_file: {key}}}\n"))
    assert f"privacy.key_file {key} is accessible to group or others" in line and "chmod 600" in line


def test_release_refuses_a_readable_key(tmp_path):
    from dpdeepsets.noise import create_key

    emb = embeddings_file(tmp_path)
    sets = tmp_path / "sets.npz"
    np.savez(sets, anchors=np.array([0]), members=np.arange(8)[None])
    key = create_key(tmp_path / "noise.key")
    key.chmod(0o640)
    out = tmp_path / "release.json"
    line = one_error_line(run_stage("release_embedding.py", "--configfile", yaml_config(tmp_path, {}),
                                    "--embeddings", emb, "--sets", sets, "--key", key, "--n", 8,
                                    "--pset", "p0", "--epsilon", 1, "--seed", 0, "--out", out))
    assert str(key) in line and "chmod 600" in line
    nothing_written(out)


def test_settings_json_missing_a_section(tmp_path):
    """A stage given --settings without a section it reads (e.g. a hand-edited command)."""
    out = tmp_path / "sets.npz"
    line = one_error_line(run_stage("build_subsets.py", "--settings", json.dumps({"lora": {}}),
                                    "--embeddings", embeddings_file(tmp_path), "--pool", "public",
                                    "--out", out))
    assert "--settings lacks config sections ['subsets']" in line
    nothing_written(out)
