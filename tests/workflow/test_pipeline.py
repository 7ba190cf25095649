"""End to end: the tiny config through Snakemake, then every artifact checked."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# tiny_run (tests/conftest.py): the tiny config run locally once per session.


EXPECTED_EPS = {"dpdeepsets": ["1.0", "16.0", "inf"], "dpsgd": ["1.0", "16.0"],
                "public_ft_dpsgd": ["1.0", "16.0"], "pda_dpmd": ["1.0", "16.0"],
                "nonprivate": ["inf"], "base": ["inf"]}


@pytest.mark.slow
def test_metrics_complete_and_finite(tiny_run):
    """Every (method, private set, epsilon, seed) cell of the tiny config has one finite row."""
    df = pd.read_csv(tiny_run / "metrics.csv")
    assert set(df.method) == set(EXPECTED_EPS)
    for method, eps in EXPECTED_EPS.items():
        for pset in ["p0", "p1"]:
            got = df[(df.method == method) & (df.pset == pset) & (df.seed == 0)].epsilon.astype(str)
            assert sorted(got) == sorted(eps), (method, pset)
    assert len(df) == 2 * sum(len(e) for e in EXPECTED_EPS.values())
    assert np.isfinite(df[["fid", "kid"]].to_numpy()).all()
    assert (df.n_samples == 16).all() and (df.n_reference == 24).all()
    summary = pd.read_csv(tiny_run / "summary.csv")
    one = summary[(summary.method == "dpsgd") & (summary.epsilon == 1.0)].iloc[0]
    ours = df[(df.method == "dpdeepsets") & (df.epsilon == 1.0)].fid.mean()
    assert one.n_cells == 2
    assert one.fid_minus_dpdeepsets == pytest.approx(df[(df.method == "dpsgd") & (df.epsilon == 1.0)].fid.mean() - ours)


@pytest.mark.slow
def test_ledger_sigmas_match_calibration(tiny_run):
    from dpdeepsets import privacy

    ledger = pd.read_csv(tiny_run / "privacy_ledger.csv")
    ours = ledger[ledger.method == "dpdeepsets"]
    assert len(ours) == 6
    for _, r in ours.iterrows():
        sens = privacy.clipped_mean_sensitivity(24, 1.0, "replace_one")
        assert r.sensitivity == pytest.approx(sens)
        eps = float(r.epsilon)
        expect = 0.0 if math.isinf(eps) else privacy.analytic_gaussian_sigma(eps, 1e-5, sens)
        assert r.sigma == pytest.approx(expect, rel=1e-12)
    for pset, g in ours.groupby("pset"):
        private = g[g.private.astype(bool)]
        mu = math.sqrt(sum((private.sensitivity / private.sigma) ** 2))
        assert g.composed_mu.iloc[0] == pytest.approx(mu)
        assert g.composed_epsilon.iloc[0] >= private.epsilon.astype(float).max()


@pytest.mark.slow
def test_every_dpsgd_run_is_accounted_within_its_target(tiny_run):
    """Each DP-SGD-family fit's ledger row carries opacus' accountant numbers, eps <= target."""
    ledger = pd.read_csv(tiny_run / "privacy_ledger.csv")
    dp = ledger[ledger.method.isin(["dpsgd", "public_ft_dpsgd", "pda_dpmd"])]
    assert len(dp) == 3 * 2 * 2
    assert (dp.accounted_epsilon <= dp.epsilon.astype(float) + 1e-9).all()
    assert (dp.accounted_epsilon > 0.5 * dp.epsilon.astype(float)).all()  # calibrated, not wasted
    assert (dp.noise_multiplier > 0).all() and (dp.steps > 0).all()
    assert ((dp.sample_rate > 0) & (dp.sample_rate <= 1)).all()
    assert dp.private.astype(bool).all()
    nonpriv = ledger[ledger.method == "nonprivate"]
    assert len(nonpriv) == 2 and not nonpriv.private.astype(bool).any()


@pytest.mark.slow
def test_artifacts_load(tiny_run):
    import torch

    from dpdeepsets import diffusion, lora
    from dpdeepsets.data import load_split

    unet, scheduler = diffusion.load_base(tiny_run / "base")
    for f in ["public", "private"]:
        images, _ = load_split(tiny_run / "data" / f"{f}.npz")
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 1)
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
    for png in ["fid_vs_epsilon.png", "kid_vs_epsilon.png", "samples.png", "samples_vs_epsilon.png"]:
        assert (tiny_run / png).stat().st_size > 1000
    assert torch.load(tiny_run / "hypernet/hypernet.pt", weights_only=False)["hparams"]["emb_dim"] == 8


@pytest.mark.slow
def test_grid_jobs_equal_one_process_per_epsilon(tiny_run, tmp_path):
    """A DP method's epsilon grid runs in one job (fit_baseline, sample, evaluate); each cell
    must equal what a process of its own makes. Rerun the last epsilon alone, by hand."""
    import torch
    from safetensors.torch import load_file

    from dpdeepsets.data import load_split

    cfg = ["--configfile", "config/test.yaml", "--threads", "1"]
    common = ["--method", "public_ft_dpsgd", "--base", f"{tiny_run}/base", "--seed", "0"]
    adapter = tmp_path / "adapter"
    subprocess.run([sys.executable, "workflow/scripts/fit_baseline.py", *cfg, *common,
                    "--private", f"{tiny_run}/data/private.npz", "--sets", f"{tiny_run}/subsets/private.npz",
                    "--pset", "p1", "--public-lora", f"{tiny_run}/adapters/public_lora",
                    "--epsilon", "16", "--out", str(adapter), "--out-ledger", str(tmp_path / "ledger.json")],
                   cwd=ROOT, check=True, capture_output=True)
    grid = tiny_run / "adapters/public_ft_dpsgd/p1/eps16_seed0"
    a, b = (load_file(d / "adapter_model.safetensors") for d in (adapter, grid))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (json.loads((tmp_path / "ledger.json").read_text())
            == json.loads((tiny_run / "ledger/public_ft_dpsgd/p1/eps16_seed0.json").read_text()))
    samples = tmp_path / "samples.npz"
    subprocess.run([sys.executable, "workflow/scripts/sample.py", *cfg, "--base", f"{tiny_run}/base",
                    "--adapter", str(adapter), "--seed", "0", "--out", str(samples),
                    "--out-grid", str(tmp_path / "grid.png")], cwd=ROOT, check=True, capture_output=True)
    mine, _ = load_split(samples)
    theirs, _ = load_split(tiny_run / "samples/public_ft_dpsgd/p1/eps16_seed0.npz")
    assert np.array_equal(mine, theirs)
    metrics = tmp_path / "metrics.json"
    subprocess.run([sys.executable, "workflow/scripts/evaluate.py", *cfg, "--samples", str(samples),
                    "--reference", f"{tiny_run}/eval/reference/p1.npz", "--method", "public_ft_dpsgd",
                    "--pset", "p1", "--epsilon", "16", "--seed", "0", "--out", str(metrics)],
                   cwd=ROOT, check=True, capture_output=True)
    assert (json.loads(metrics.read_text())
            == json.loads((tiny_run / "eval/metrics/public_ft_dpsgd/p1/eps16_seed0.json").read_text()))


@pytest.mark.slow
def test_sampling_change_reruns_only_downstream(tiny_run, tmp_path):
    """Changing only the sampling settings reruns sampling, evaluation and the report."""
    override = tmp_path / "override.yaml"
    override.write_text("sampling:\n  ddim_steps: 5\n")
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
    assert rules == {"sample", "sample_reference", "evaluate", "evaluate_reference", "report",
                     "sample_figure", "all"}, rules


@pytest.mark.slow
def test_lint_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
