"""End to end: the tiny config through Snakemake, then every artifact checked."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpdeepsets import methods as M

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SCRIPTS = ROOT / "workflow" / "scripts"

# tiny_run (tests/conftest.py): the tiny config run locally once per session.
GRID = ["1.0", "16.0"]
EXPECTED_EPS = {"dpdeepsets": GRID + ["inf"], "nearest_public_lora": GRID + ["inf"],
                "dpsgd": GRID, "public_ft_dpsgd": GRID, "pda_dpmd": GRID, "private_evolution": GRID,
                "mean_public_lora": ["0.0"], "base": ["0.0"], "nonprivate": ["inf"],
                "bank_recipe_lora": ["inf"]}


@pytest.mark.slow
def test_metrics_complete_and_finite(tiny_run):
    """Every (method, private set, epsilon, seed) cell of the tiny config has one finite row;
    public-only methods are scored against every set."""
    df = pd.read_csv(tiny_run / "metrics.csv")
    assert set(df.method) == set(EXPECTED_EPS) == set(M.REGISTRY)
    for method, eps in EXPECTED_EPS.items():
        for pset in ["p0", "p1"]:
            got = df[(df.method == method) & (df.pset == pset) & (df.seed == 0)].epsilon.astype(str)
            assert sorted(got) == sorted(eps), (method, pset)
    assert len(df) == 2 * sum(len(e) for e in EXPECTED_EPS.values())
    cols = ["fid", "kid", "precision", "recall", "density", "coverage", "class_tv"]
    assert np.isfinite(df[cols].to_numpy()).all()
    assert (df.n_samples == 16).all() and (df.n_reference == 24).all()


@pytest.mark.slow
def test_summary_margins_are_paired_differences_with_intervals(tiny_run):
    df = pd.read_csv(tiny_run / "metrics.csv")
    summary = pd.read_csv(tiny_run / "summary.csv")
    one = summary[(summary.method == "dpsgd") & (summary.epsilon == 1.0)].iloc[0]
    ours = df[(df.method == "dpdeepsets") & (df.epsilon == 1.0)].set_index("pset").fid
    theirs = df[(df.method == "dpsgd") & (df.epsilon == 1.0)].set_index("pset").fid
    assert one.n_cells == 2 and one.n_units == 2
    assert one.fid_margin == pytest.approx((theirs - ours).mean())
    assert one.fid_margin_lo <= one.fid_margin <= one.fid_margin_hi
    # the ablations are compared with DP-DeepSets at every epsilon
    for method in ("nearest_public_lora", "mean_public_lora"):
        rows = summary[summary.method == method].dropna(subset=["fid_margin"])
        assert sorted(rows.compared_at_epsilon) == [1.0, 16.0], method
    spec = pd.read_csv(tiny_run / "specificity.csv")
    # every sample set scored against every private set: one per cell, and one per public
    # method (pset "all": the same samples serve every set)
    against = spec.groupby(["method", "epsilon", "pset", "seed"]).scored_against.apply(frozenset)
    assert set(against) == {frozenset({"p0", "p1"})}
    per_set = {k for k in against.index if k[2] != "all"}
    public = set(spec[spec.pset == "all"].method)
    assert public == {"mean_public_lora", "base"}
    assert per_set == {(r.method, r.epsilon, r.pset, r.seed) for r in df.itertuples()
                       if r.method not in public}
    assert {"own_closest_fid", "own_closest_class", "cells"} <= set(summary.columns)


@pytest.mark.slow
def test_ledger_sigmas_match_calibration(tiny_run):
    from dpdeepsets import privacy

    ledger = pd.read_csv(tiny_run / "privacy_ledger.csv")
    assert (ledger.adjacency[ledger.private.astype(bool)] == "add_remove").all()
    assert not any("seed" in c for c in ledger.columns)  # no seed: the noise follows from the key only
    ours = ledger[ledger.method == "dpdeepsets"]
    assert len(ours) == 6
    for _, r in ours.iterrows():
        sens = privacy.clipped_mean_sensitivity(24, 1.0, "add_remove")
        assert r.sensitivity == pytest.approx(sens) and r.n == 24
        eps = float(r.epsilon)
        expect = 0.0 if math.isinf(eps) else privacy.analytic_gaussian_sigma(eps, 1e-5, sens)
        assert r.sigma == pytest.approx(expect, rel=1e-12)
        assert r.noise_source == "keyed" and isinstance(r.key_fingerprint, str)
    budget = pd.read_csv(tiny_run / "privacy_budget.csv")
    person = budget[budget.pset.isin(["per person"]) | budget.pset.str.contains("[+]")]
    assert list(person.pset) == ["per person"]  # disjoint sets: nobody is in two of them
    per_set = budget[budget.artifact.str.startswith("everything DP published from")]
    assert person.epsilon.iloc[0] == pytest.approx(per_set.epsilon.max())
    for pset, g in budget[budget.pset.isin(["p0", "p1"])].groupby("pset"):
        everything = g[g.artifact.str.startswith("everything")].epsilon.iloc[0]
        assert everything >= g[np.isfinite(g.epsilon)].epsilon.max() - 1e-9
        releases = ours[(ours.pset == pset) & ours.private.astype(bool)]
        mu = math.sqrt(sum((releases.sensitivity / releases.sigma) ** 2))
        row = g[g.artifact.str.startswith("samples_vs_epsilon")].iloc[0]
        assert row.epsilon == pytest.approx(privacy.gdp_epsilon(mu, 1e-5))


@pytest.mark.slow
def test_every_dpsgd_run_is_accounted_within_its_target(tiny_run):
    """Each DP-SGD fit's ledger row carries the privacy module's numbers, eps <= target."""
    ledger = pd.read_csv(tiny_run / "privacy_ledger.csv")
    dp = ledger[ledger.method.isin(M.names(privacy="dp_sgd"))]
    assert len(dp) == 3 * 2 * 2
    assert (dp.accounted_epsilon <= dp.epsilon.astype(float) + 1e-9).all()
    assert (dp.accounted_epsilon > 0.5 * dp.epsilon.astype(float)).all()  # calibrated, not wasted
    assert (dp.noise_multiplier > 0).all() and (dp.steps > 0).all()
    assert ((dp.sample_rate > 0) & (dp.sample_rate <= 1)).all()
    assert dp.private.astype(bool).all() and (dp.noise_source == "keyed").all()
    assert set(dp.accountant) <= {"gdp", "prv", "rdp"}
    nonpriv = ledger[ledger.method == "nonprivate"]
    assert len(nonpriv) == 2 and not nonpriv.private.astype(bool).any()
    for f in (tiny_run / "ledger").rglob("*.json"):  # no private loss in any DP artifact
        assert "loss" not in f.read_text()


@pytest.mark.slow
def test_private_evolution_is_accounted_as_its_histograms(tiny_run):
    """Private Evolution's ledger rows: T Gaussian vote histograms of sensitivity 1, sigma from
    the privacy module, composed as one Gaussian of sensitivity sqrt(T); nothing computed from
    the noise-free histogram (no parents, no counts) in its ledger files."""
    from dpdeepsets import privacy

    ledger = pd.read_csv(tiny_run / "privacy_ledger.csv")
    pe = ledger[ledger.method == "private_evolution"]
    assert len(pe) == 2 * 2 and (pe.mechanism == "pe_vote_histogram").all()
    assert pe.private.astype(bool).all() and (pe.noise_source == "keyed").all()
    for _, r in pe.iterrows():
        sigma = privacy.pe_histogram_sigma(r.epsilon, 1e-5, int(r.iterations), "add_remove")
        assert r.sigma == pytest.approx(sigma) and r.sensitivity == pytest.approx(math.sqrt(r.iterations))
        assert r.accounted_epsilon <= r.epsilon * (1 + 1e-9)
    for f in (tiny_run / "ledger" / "private_evolution").rglob("*.json"):
        text = json.loads(f.read_text())
        assert all("parents" not in it for it in text["iterations"])
        assert set(text) == {"ledger", "iterations"}
    budget = pd.read_csv(tiny_run / "privacy_budget.csv")
    assert budget.artifact.str.contains("private_evolution").any()


@pytest.mark.slow
def test_artifacts_load(tiny_run):
    import torch

    from dpdeepsets import diffusion, lora
    from dpdeepsets.data import load_split

    unet, scheduler = diffusion.load_base(tiny_run / "base")
    for f in ["public", "validation", "private"]:
        images, _ = load_split(tiny_run / "data" / f"{f}.npz")
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 1)
        if f != "validation":
            emb = np.load(tiny_run / "embeddings" / f"{f}.npy")
            assert emb.shape == (len(images), 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    release = json.loads((tiny_run / "release/p0/eps1_seed0.json").read_text())
    assert len(release["noisy_embedding"]) == 8 and release["ledger"]["mechanism"] == "analytic_gaussian"
    # A generated adapter loads onto the base with peft and reproduces the pipeline's samples.
    adapter = tiny_run / "adapters/dpdeepsets/p0/eps16_seed0"
    lora.load_adapter_with_peft(unet, adapter)
    x = diffusion.ddim_sample(unet, scheduler, num_samples=16, steps=4, seed=0)
    again = diffusion.tensor_to_images(x)
    saved, _ = load_split(tiny_run / "samples/dpdeepsets/p0/eps16_seed0.npz")
    assert np.abs(again.astype(int) - saved.astype(int)).max() <= 1
    feats = np.load(tiny_run / "features/dpdeepsets/p0/eps16_seed0.npz")
    assert feats["features"].shape == (16, 2048) and feats["labels"].shape == (16,)
    for png in ["fid_vs_epsilon.png", "kid_vs_epsilon.png", "samples.png", "samples_vs_epsilon.png",
                "specificity.png"]:
        assert (tiny_run / png).stat().st_size > 1000
    assert torch.load(tiny_run / "hypernet/hypernet.pt", weights_only=False)["hparams"]["emb_dim"] == 8


def _close_ledgers(a: dict, b: dict):
    """Ledger entries equal, accountant numbers to 1e-9 relative (an iterative numerical method:
    reproducible bit for bit only for the same arithmetic path, see docs/privacy.md)."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=0), k
        else:
            assert a[k] == b[k], k


@pytest.mark.slow
def test_grid_jobs_equal_one_process_per_epsilon(tiny_run, tiny_key, tmp_path):
    """A DP method's epsilon grid runs in one job (fit_baseline, sample); each cell must equal
    what a process of its own makes. Rerun the last epsilon alone, by hand."""
    import torch
    from safetensors.torch import load_file

    from dpdeepsets.data import load_split

    # what the workflow read: config/config.yaml, then the tiny config over it
    cfg = ["--configfile", "config/config.yaml", "config/test.yaml", "--threads", "1"]
    adapter = tmp_path / "adapter"
    subprocess.run([sys.executable, str(SCRIPTS / "fit_baseline.py"), *cfg, "--method",
                    "public_ft_dpsgd", "--base", f"{tiny_run}/base", "--seed", "0",
                    "--private", f"{tiny_run}/data/private.npz", "--sets", f"{tiny_run}/subsets/private.npz",
                    "--pset", "p1", "--n", "24", "--key", str(tiny_key),
                    "--public-lora", f"{tiny_run}/adapters/public_pool_lora",
                    "--epsilon", "16", "--out", str(adapter), "--out-ledger", str(tmp_path / "ledger.json")],
                   cwd=ROOT, check=True, capture_output=True)
    grid = tiny_run / "adapters/public_ft_dpsgd/p1/eps16_seed0"
    a, b = (load_file(d / "adapter_model.safetensors") for d in (adapter, grid))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _close_ledgers(json.loads((tmp_path / "ledger.json").read_text())["ledger"],
                   json.loads((tiny_run / "ledger/public_ft_dpsgd/p1/eps16_seed0.json").read_text())["ledger"])
    samples, feats = tmp_path / "samples.npz", tmp_path / "features.npz"
    subprocess.run([sys.executable, str(SCRIPTS / "sample.py"), *cfg, "--base", f"{tiny_run}/base",
                    "--adapter", str(adapter), "--seed", "0", "--out", str(samples),
                    "--out-grid", str(tmp_path / "grid.png"), "--out-features", str(feats),
                    "--classifier", f"{tiny_run}/eval/digit_classifier.npz", "--inception-runtime",
                    "auto", "--inception-cache", f"{tiny_run}/cache/inception"],
                   cwd=ROOT, check=True, capture_output=True)
    mine, _ = load_split(samples)
    theirs, _ = load_split(tiny_run / "samples/public_ft_dpsgd/p1/eps16_seed0.npz")
    # sampled alone vs in the batched pass of its grid: equal to one grey level
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    f_mine = np.load(feats)
    f_theirs = np.load(tiny_run / "features/public_ft_dpsgd/p1/eps16_seed0.npz")
    if np.array_equal(mine, theirs):
        np.testing.assert_allclose(f_mine["features"], f_theirs["features"], atol=1e-4)
        np.testing.assert_array_equal(f_mine["labels"], f_theirs["labels"])


@pytest.mark.slow
def test_sampling_change_reruns_only_downstream(tiny_run, tiny_key, tmp_path):
    """Changing only the sampling settings reruns sampling, scoring and the report, and Private
    Evolution, whose random and variation APIs are the base model's DDIM sampler."""
    override = tmp_path / "override.yaml"  # the run's own key, as the tiny run was given it
    override.write_text(f"sampling:\n  ddim_steps: 5\nprivacy:\n  key_file: {tiny_key}\n")
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", "config/test.yaml", str(override),
                           "--config", f"results_dir={tiny_run}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    rules = set()
    for line in out[out.index("Job stats"):].splitlines()[3:]:  # title, header, rule line
        if line.startswith("total"):
            break
        rules.add(line.split()[0])
    assert rules == {"sample", "sample_reference", "sample_public", "private_evolution", "score",
                     "report", "sample_figure", "all"}, rules


def test_conda_env_mirrors_the_venv_and_is_not_advertised():
    """The venv is the supported deployment (docs/operations.md#deployment). The conda env of
    every rule mirrors it for --use-conda: its pip paths (relative to the env file, where conda
    runs pip) name the pinned requirements, the lock and the package; the catalog does not
    advertise conda, because no conda channel is reachable where this project is tested."""
    import yaml

    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"].get("conda") is False
    env_file = ROOT / "workflow" / "envs" / "dpdeepsets.yaml"
    env = yaml.safe_load(env_file.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    paths = {flag: (env_file.parent / arg).resolve() for flag, arg in (x.split() for x in pip)}
    assert paths == {"-r": ROOT / "requirements.txt", "-c": ROOT / "requirements.lock", "-e": ROOT}
    assert (ROOT / "pyproject.toml").is_file() and "python=3.11" in env["dependencies"]


def test_use_conda_does_not_put_the_venv_first():
    """Without --use-conda every job runs with the venv's bin first on PATH; with it, the
    job's conda env must come first, so the workflow adds no PATH prefix."""
    from snakemake.settings.types import DeploymentMethod  # noqa: F401  (the API the workflow reads)

    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "if not USE_CONDA:\n    shell.prefix(" in common
    assert "USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method" in common
    rules = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    import re

    shells = sum(len(re.findall(r"^\s+shell:$", smk.read_text(), flags=re.M)) for smk in rules)
    condas = sum(len(re.findall(r"^\s+conda:\n\s+ENV$", smk.read_text(), flags=re.M)) for smk in rules)
    assert condas == shells, "every rule that runs a command declares the conda env"


@pytest.mark.slow
def test_lint_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
