"""The synthetic linear-regression comparison (dpdeepsets.synthetic, `snakemake synthetic`)."""

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpdeepsets import privacy
from dpdeepsets import synthetic as S
from dpdeepsets.config import load_config
from dpdeepsets.hypernet import HyperNet

ROOT = Path(__file__).resolve().parents[2]

SMALL = {  # a few seconds: D >> k, small public world, short training
    "dims": [48], "k": 2, "num_public_tasks": 40, "public_examples": 512, "n": 256,
    "epsilons": [1], "repetitions": 4, "shift_dim": 48, "shift_degrees": [0, 90],
    "hypernet": {"d_model": 32, "steps": 300, "batch_size": 32},
    "dpsgd": {"epochs": 5, "clip_grid": [0.1, 0.3, 1], "lr_grid": [0.03, 0.1, 0.3],
              "tune_tasks": 2},
}


def small_cfg(**over):
    cfg = copy.deepcopy(load_config()["synthetic"])
    for key, value in {**SMALL, **over}.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny ops: extra torch/BLAS threads only add synchronisation (and make a
    busy machine many times slower), as in workflow/scripts/synthetic.py."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_run():
    return S.run_experiment(small_cfg())


@pytest.fixture(scope="module")
def small_public():
    cfg = small_cfg()
    family = S.TaskFamily(48, 2, cfg["noise_std"], 0)
    return family, S.fit_public(family, cfg, cfg["epsilons"]), cfg


def test_tasks_lie_in_the_hidden_subspace_and_shift_by_the_angle():
    family = S.TaskFamily(32, 3, 0.5, 0)
    u = family.basis
    assert np.allclose(u.T @ u, np.eye(3), atol=1e-12)
    for m in range(5):
        _, _, w = family.public_task(m, 10)
        assert np.linalg.norm(w - u @ (u.T @ w)) < 1e-12 * max(1.0, np.linalg.norm(w))
    x0, y0, w0 = family.private_task(0, 64)
    assert S.angle_to_subspace(w0, u) == pytest.approx(0.0, abs=1e-6)
    for deg in [15, 30, 45, 60, 90]:
        x, _, w = family.private_task(0, 64, deg)
        assert S.angle_to_subspace(w, u) == pytest.approx(deg, abs=1e-6)
        assert np.linalg.norm(w) == pytest.approx(np.linalg.norm(w0))
        assert np.array_equal(x, x0)  # common random numbers: only w is rotated
    # the same repetition has the same ||w|| in every D (common random numbers across D)
    w_big = S.TaskFamily(128, 3, 0.5, 0).private_task(0, 8)[2]
    assert np.linalg.norm(w_big) == pytest.approx(np.linalg.norm(w0))
    with pytest.raises(ValueError, match="shift"):
        S.shift_vector(w0, u, 120, np.random.default_rng(0))


def test_public_projection_finds_the_subspace(small_public):
    family, public, _ = small_public
    assert public.proj_dim == 2  # chosen by the public eigengap, k is never given to it
    # span(P) ~ span(U): principal angles are small
    s = np.linalg.svd(public.proj.T @ family.basis, compute_uv=False)
    assert s.min() > 0.99
    assert isinstance(public.net, HyperNet)  # the main pipeline's hypernetwork, reused


def test_dpdeepsets_releases_once_through_the_privacy_module(small_public, monkeypatch):
    family, public, cfg = small_public
    calls = []
    real = privacy.release_clipped_mean

    def spy(emb, **kw):
        calls.append((np.asarray(emb).shape, kw))
        return real(emb, **kw)

    monkeypatch.setattr(S.privacy, "release_clipped_mean", spy)
    x, y, w = family.private_task(0, cfg["n"])
    for adjacency in ["add_remove", "replace_one"]:
        calls.clear()
        w_hat, ledger = S.dpdeepsets_fit(public, x, y, epsilon=1.0, delta=1e-5,
                                         adjacency=adjacency, noise="seeded", seed=3)
        assert len(calls) == 1 and calls[0][0] == (cfg["n"], public.proj_dim)  # d-dim, not D
        sens = privacy.clipped_mean_sensitivity(cfg["n"], public.clip_norm, adjacency)
        assert ledger["sensitivity"] == sens and ledger["dim"] == public.proj_dim
        assert ledger["sigma"] == privacy.analytic_gaussian_sigma(1.0, 1e-5, sens)
        assert ledger["mechanism"] == "analytic_gaussian" and w_hat.shape == (48,)
    # the hypernetwork was trained on exactly the sigmas the release uses
    assert public.train_sigmas[1.0] == privacy.analytic_gaussian_sigma(
        1.0, cfg["delta"], privacy.clipped_mean_sensitivity(cfg["n"], public.clip_norm,
                                                            cfg["adjacency"]))


def test_dpsgd_accountant_within_target_and_matches_make_private_with_epsilon():
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    family = S.TaskFamily(16, 2, 0.5, 0)
    x, y, w = family.private_task(0, 256)
    for eps in [0.5, 2.0]:
        w_hat, info = S.dpsgd_fit(x, y, epsilon=eps, delta=1e-5, clip_norm=1.0, lr=0.1,
                                  epochs=3, batch_size=64, accountant="rdp", seed=0)
        assert 0.9 * eps <= info["epsilon_spent"] <= eps
        assert info["steps"] == 3 * 4 and np.all(np.isfinite(w_hat))
        # the memoised noise multiplier is the one make_private_with_epsilon picks
        engine = PrivacyEngine(accountant="rdp")
        model = torch.nn.Linear(16, 1, bias=False)
        data = TensorDataset(torch.zeros(256, 16), torch.zeros(256, 1))
        _, opt, _ = engine.make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(data, batch_size=64), target_epsilon=eps,
            target_delta=1e-5, epochs=3, max_grad_norm=1.0)
        assert info["noise_multiplier"] == opt.noise_multiplier


def test_least_squares_beats_zero_and_oracle_beats_least_squares():
    family = S.TaskFamily(32, 2, 0.5, 1)
    for rep in range(3):
        x, y, w = family.private_task(rep, 200)
        ls = S.excess_risk(S.least_squares(x, y), w)
        assert ls < S.excess_risk(np.zeros_like(w), w)
        assert S.excess_risk(S.subspace_least_squares(x, y, family.basis), w) < ls
    assert np.allclose(S.least_squares(x, y), np.linalg.lstsq(x, y, rcond=None)[0])


def test_dpdeepsets_beats_dpsgd_when_d_much_larger_than_k(small_run):
    df = small_run.excess
    mean = df.groupby("method")["excess_risk"].mean()
    assert mean["dpdeepsets"] < mean["dpsgd"]
    assert mean["least_squares"] < mean["zero"]
    dp = df[df.method.isin(["dpdeepsets", "dpsgd"])]
    assert (dp.epsilon == 1.0).all() and (dp.epsilon_spent <= 1.0).all()
    assert set(df[df.method == "zero"].epsilon) == {math.inf}
    ratio = S.ratio_table(df)
    assert ratio.loc[48, 1.0] == pytest.approx(mean["dpsgd"] / mean["dpdeepsets"])
    assert small_run.tuning.chosen.sum() == 1  # one DP-SGD choice per epsilon (shift's is 1 too)


def test_shift_out_of_the_public_subspace_removes_the_advantage(small_run):
    s = small_run.shift.groupby(["shift_degrees", "method"])["excess_risk"].mean()
    assert s[(0.0, "dpdeepsets")] < s[(0.0, "dpsgd")]
    # at 90 degrees the projection discards all of w: no better than predicting zero
    assert s[(90.0, "dpdeepsets")] >= 0.9 * s[(90.0, "zero")]
    assert s[(90.0, "dpdeepsets")] > s[(90.0, "dpsgd")]


def test_tables_and_figures(small_run, tmp_path):
    text = S.format_tables(small_run.excess, small_run.shift, small_run.public)
    assert "Ratio mean DP-SGD / mean DP-DeepSets" in text and "Shift" in text
    S.plot_excess_risk(tmp_path / "a.png", small_run.excess)
    S.plot_shift(tmp_path / "b.png", small_run.shift)
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_k_must_be_smaller_than_d():
    with pytest.raises(ValueError, match="synthetic.k"):
        S.run_experiment(small_cfg(k=48))


TINY = """\
synthetic:
  dims: [8, 24]
  k: 2
  num_public_tasks: 24
  public_examples: 256
  n: 128
  epsilons: [1, 4]
  repetitions: 2
  shift_dim: 8
  shift_degrees: [0, 90]
  hypernet: {d_model: 16, heads: 2, steps: 40, batch_size: 16}
  dpsgd: {epochs: 2, batch_size: 64, clip_grid: [0.3, 1], lr_grid: [0.1], tune_tasks: 1}
"""


@pytest.mark.slow
def test_snakemake_synthetic_target(tmp_path):
    cfg = tmp_path / "tiny_synthetic.yaml"
    cfg.write_text(TINY)
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "synthetic",
                           "--configfile", str(cfg), "--config", f"results_dir={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = results / "synthetic"
    df = pd.read_csv(out / "excess_risk.csv")
    assert set(df.D) == {8, 24} and set(df.method) == {
        "dpdeepsets", "dpsgd", "least_squares", "zero", "oracle_subspace_ls"}
    assert len(pd.read_csv(out / "shift.csv")) == 2 * 2 * 5
    for png in ["excess_risk.png", "shift.png"]:
        assert (out / png).stat().st_size > 1000
    assert "Ratio mean DP-SGD / mean DP-DeepSets" in proc.stdout  # the table is printed
