import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpdeepsets.config import ConfigError, load_config, load_schema

ROOT = Path(__file__).resolve().parents[2]


def _walk(schema, path=""):
    for key, sub in schema.get("properties", {}).items():
        yield f"{path}{key}", sub
        if sub.get("type") == "object":
            yield from _walk(sub, f"{path}{key}.")


def test_every_schema_key_has_description_and_default():
    missing = [k for k, sub in _walk(load_schema()) if "description" not in sub or "default" not in sub]
    assert missing == []


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "paper.yaml"))
def test_shipped_configs_validate(name):
    """Each overlay as the workflow reads it: config/config.yaml first, the overlay over it."""
    cfg = load_config([ROOT / "config/config.yaml", ROOT / "config" / name])
    assert cfg["privacy"]["delta"] < 1 and cfg["subsets"]["set_size"] >= 2


def test_configfiles_merge_like_snakemake(tmp_path):
    """Mappings merge key by key, lists and scalars are replaced, later files win."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("privacy: {epsilons: [1, 4], delta: 1.0e-6}\nsubsets: {set_size: 24}\nevaluation: {figure_epsilon: 4}\n")
    b.write_text("privacy: {epsilons: [4]}\n")
    cfg = load_config([a, b])
    assert cfg["privacy"]["epsilons"] == [4] and cfg["privacy"]["delta"] == 1e-6
    assert cfg["subsets"]["set_size"] == 24
    assert load_config([b, a])["privacy"]["epsilons"] == [1, 4]
    # a stage script takes the same list
    from dpdeepsets import cli

    args = cli.make_parser("x", ["privacy"]).parse_args(["--configfile", str(a), str(b)])
    assert cli.read_settings(args, ["privacy"])["privacy"]["epsilons"] == [4]


def test_defaults_filled():
    cfg = load_config(None)
    assert cfg["subsets"]["set_size"] == 128 and cfg["privacy"]["adjacency"] == "add_remove"
    assert cfg["privacy"]["noise"] == "keyed" and cfg["privacy"]["key_file"] is None


@pytest.mark.parametrize("text, match", [
    ("privacy: {epsilons: [0]}", "privacy.epsilons.0"),
    ("privacy: {epsilons: [-1]}", "privacy.epsilons.0"),
    ("privacy: {epsilons: []}", "privacy.epsilons"),
    ("privacy: {delta: 1.0}", "privacy.delta"),
    ("evaluation: {methods: [dpsgdd]}", "evaluation.methods.0"),
    ("lora: {rnak: 4}", "rnak"),
    ("subsets: {set_size: 1}", "subsets.set_size"),
    ("privacy: {adjacency: swap}", "privacy.adjacency"),
    ("privacy: {adjacency: replace_one}", "privacy.adjacency=replace_one"),
    ("privacy: {noise: seeded}", "privacy.noise"),
    ("privacy: {noise_seed: 0}", "noise_seed"),
    ("baselines: {tuned: [{method: dpdeepsets, epsilon: 1}]}", "baselines.tuned.0.method"),
])
def test_bad_values_refused_with_key(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        load_config(f)


def test_malformed_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("privacy: {epsilons: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "privacy": {"delta": 2}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(f)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "delta" in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()


def test_script_error_is_one_line_and_writes_nothing(tmp_path):
    """A stage script given impossible settings exits 2 with one 'error:' line, no artifact."""
    out = tmp_path / "release.json"
    emb = tmp_path / "e.npy"
    sets = tmp_path / "s.npz"
    import numpy as np

    np.save(emb, np.ones((4, 3), np.float32))
    np.savez(sets, members=np.arange(4)[None])
    proc = subprocess.run(
        [sys.executable, "workflow/scripts/release_embedding.py", "--settings",
         '{"privacy": {"epsilons": [1], "delta": 1e-5, "clip_norm": -1, "adjacency": "replace_one",'
         ' "noise": "secure", "key_file": null, "nonprivate_reference": true}}',
         "--embeddings", str(emb), "--sets", str(sets), "--n", "4", "--pset", "p0", "--epsilon", "1",
         "--seed", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "clip" in lines[-1].lower()
    assert not out.exists() and not list(tmp_path.glob(".release*"))


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "workflow/scripts").glob("*.py")))
def test_scripts_have_help(script):
    proc = subprocess.run([sys.executable, f"workflow/scripts/{script}", "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage" in proc.stdout
