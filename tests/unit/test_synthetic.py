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

from dpdeepsets import noise, privacy
from dpdeepsets import synthetic as S
from dpdeepsets.config import load_config
from dpdeepsets.hypernet import HyperNet
from dpdeepsets.noise import KeyedNoise, NoiseKeyError, PublicSeedNoise, SecureNoise

ROOT = Path(__file__).resolve().parents[2]

SMALL = {  # a few seconds: D >> k, small public world, short training
    "dims": [48], "k": 2, "num_public_tasks": 40, "public_examples": 512, "n": 256,
    "epsilons": [1], "repetitions": 4, "shift_dim": 48, "shift_degrees": [0, 90],
    "hypernet": {"d_model": 32, "steps": 300, "batch_size": 32},
    "dpsgd": {"epochs": 5, "clip_grid": [0.1, 0.3, 1], "lr_grid": [0.03, 0.1, 0.3],
              "tune_tasks": 2, "accountant": "rdp"},  # PRV's calibration took 12 s here
}


def small_cfg(**over):
    cfg = copy.deepcopy(load_config()["synthetic"])
    for key, value in {**SMALL, **over}.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


TINY_RUN = {  # about a second: for the noise-key tests, which run the experiment several times
    # (full batch: the exact gdp accountant, no slow calibration)
    "dims": [8], "k": 2, "num_public_tasks": 12, "public_examples": 128, "n": 64,
    "epsilons": [1, 4], "repetitions": 2, "shift_dim": 8, "shift_degrees": [0, 90],
    "hypernet": {"d_model": 16, "heads": 2, "steps": 20, "batch_size": 8},
    "dpsgd": {"epochs": 2, "batch_size": 64, "clip_grid": [1], "lr_grid": [0.1], "tune_tasks": 1,
              "accountant": "gdp"},
}


def tiny_cfg(**over):
    return small_cfg(**{**TINY_RUN, **over})


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
def key_file(tmp_path_factory):
    return noise.create_key(tmp_path_factory.mktemp("secret") / "noise.key")


@pytest.fixture(scope="module")
def small_run(key_file):
    return S.run_experiment(small_cfg(), key_file=key_file)


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

    monkeypatch.setattr(privacy, "release_clipped_mean", spy)
    x, y, w = family.private_task(0, cfg["n"])
    for adjacency in ["add_remove", "replace_one"]:
        calls.clear()
        source = PublicSeedNoise(3)  # unit test: the noise need not be secret here
        w_hat, ledger = S.dpdeepsets_fit(public, x, y, epsilon=1.0, delta=1e-5,
                                         adjacency=adjacency, n=cfg["n"], noise=source)
        assert len(calls) == 1 and calls[0][0] == (cfg["n"], public.proj_dim)  # d-dim, not D
        assert calls[0][1]["n"] == cfg["n"] and calls[0][1]["noise"] is source
        sens = privacy.clipped_mean_sensitivity(cfg["n"], public.clip_norm, adjacency)
        assert ledger["sensitivity"] == sens and ledger["dim"] == public.proj_dim
        assert ledger["sigma"] == privacy.analytic_gaussian_sigma(1.0, 1e-5, sens)
        assert ledger["mechanism"] == "analytic_gaussian" and w_hat.shape == (48,)
    # add/remove: a set with one row fewer is still divided by the public n (no row count leaks)
    _, ledger = S.dpdeepsets_fit(public, x[1:], y[1:], epsilon=1.0, delta=1e-5,
                                 adjacency="add_remove", n=cfg["n"], noise=PublicSeedNoise(3))
    assert ledger["n"] == cfg["n"]
    # the hypernetwork was trained on exactly the sigmas the release uses
    assert public.train_sigmas[1.0] == privacy.analytic_gaussian_sigma(
        1.0, cfg["delta"], privacy.clipped_mean_sensitivity(cfg["n"], public.clip_norm,
                                                            cfg["adjacency"]))


def test_keyed_release_noise_depends_on_key_and_cell(small_public, tmp_path):
    family, public, cfg = small_public
    x, y, _ = family.private_task(0, cfg["n"])
    k1 = noise.load_key(noise.create_key(tmp_path / "a.key"))
    k2 = noise.load_key(noise.create_key(tmp_path / "b.key"))

    def fit(key, **cell):
        return S.dpdeepsets_fit(public, x, y, epsilon=1.0, delta=1e-5, adjacency="add_remove",
                                n=cfg["n"], noise=KeyedNoise(key, cell))[0]

    assert np.array_equal(fit(k1, rep=0), fit(k1, rep=0))
    assert not np.allclose(fit(k1, rep=0), fit(k2, rep=0))
    assert not np.allclose(fit(k1, rep=0), fit(k1, rep=1))


class _Recording(PublicSeedNoise):
    """A unit-test source that records which streams were asked for."""

    def __init__(self, seed):
        super().__init__(seed)
        self.purposes = []

    def torch_generator(self, purpose="gaussian", device="cpu"):
        self.purposes.append(purpose)
        return super().torch_generator(purpose, device)


class _SwapPoisson(PublicSeedNoise):
    """Like PublicSeedNoise(seed), except that the Poisson stream comes from another seed."""

    def __init__(self, seed, poisson_seed):
        super().__init__(seed)
        self.other = PublicSeedNoise(poisson_seed)

    def torch_generator(self, purpose="gaussian", device="cpu"):
        if purpose == "poisson":
            return self.other.torch_generator(purpose, device)
        return super().torch_generator(purpose, device)


DPSGD_KW = dict(epsilon=1.0, delta=1e-5, clip_norm=1.0, lr=0.1, epochs=3, batch_size=64,
                accountant="rdp")


def test_dpsgd_noise_and_sampling_come_from_the_source_only():
    x, y, _ = S.TaskFamily(16, 2, 0.5, 0).private_task(0, 256)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    src = _Recording(0)
    w1, info = S.dpsgd_fit(x, y, noise=src, **DPSGD_KW)
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator untouched
    assert sorted(src.purposes) == ["gaussian", "poisson"]
    torch.manual_seed(999)  # another global state changes nothing
    assert np.array_equal(S.dpsgd_fit(x, y, noise=PublicSeedNoise(0), **DPSGD_KW)[0], w1)
    assert not np.allclose(S.dpsgd_fit(x, y, noise=PublicSeedNoise(1), **DPSGD_KW)[0], w1)
    # the Poisson sample alone changes the result: the sampler draws from the source
    assert not np.allclose(S.dpsgd_fit(x, y, noise=_SwapPoisson(0, 7), **DPSGD_KW)[0], w1)
    assert info["secure_mode"] is False
    # secure: fresh entropy every run, and opacus' floating-point mitigation on
    ws, info = S.dpsgd_fit(x, y, noise=SecureNoise(), **DPSGD_KW)
    assert info["secure_mode"] is True
    assert not np.allclose(S.dpsgd_fit(x, y, noise=SecureNoise(), **DPSGD_KW)[0], ws)


def test_dpsgd_calibration_and_epsilon_from_the_privacy_module():
    from opacus.accountants import create_accountant

    x, y, _ = S.TaskFamily(16, 2, 0.5, 0).private_task(0, 256)
    for eps, acc in [(0.5, "rdp"), (2.0, "prv")]:
        w_hat, info = S.dpsgd_fit(x, y, noise=PublicSeedNoise(0),
                                  **{**DPSGD_KW, "epsilon": eps, "accountant": acc})
        q, steps = 64 / 256, 3 * 4
        assert info["sample_rate"] == q and info["steps"] == steps and info["accountant"] == acc
        assert info["expected_batch_size"] == 64  # what opacus averages by (n public)
        assert info["noise_multiplier"] == privacy.dpsgd_noise_multiplier(eps, 1e-5, q, steps, acc)
        assert info["epsilon_spent"] == privacy.dpsgd_epsilon(info["noise_multiplier"], q, steps,
                                                              1e-5, acc)
        assert 0.9 * eps <= info["epsilon_spent"] <= eps and np.all(np.isfinite(w_hat))
        # opacus' own accountant, fed the same steps, agrees with the privacy module
        engine_acc = create_accountant(acc)
        engine_acc.history = [(info["noise_multiplier"], q, steps)]
        assert engine_acc.get_epsilon(1e-5) == pytest.approx(info["epsilon_spent"], rel=1e-6)
    # full batch: the exact gdp accountant
    _, info = S.dpsgd_fit(x, y, noise=PublicSeedNoise(0),
                          **{**DPSGD_KW, "batch_size": 256, "accountant": "gdp"})
    assert info["sample_rate"] == 1.0 and info["epsilon_spent"] <= 1.0
    with pytest.raises(privacy.PrivacyError, match="gdp"):
        S.dpsgd_fit(x, y, noise=PublicSeedNoise(0), **{**DPSGD_KW, "accountant": "gdp"})


def test_dpsgd_subspace_trains_in_the_public_span(small_public, monkeypatch):
    family, public, cfg = small_public
    x, y, w = family.private_task(0, cfg["n"])
    seen = []
    real = S.methods.dpsgd_fit

    def spy(x_in, y_in, **kw):
        seen.append(x_in.shape)
        return real(x_in, y_in, **kw)

    monkeypatch.setattr(S.methods, "dpsgd_fit", spy)
    w_hat, info = S.dpsgd_subspace_fit(public, x, y, noise=PublicSeedNoise(0),
                                       **{**DPSGD_KW, "clip_norm": 2.0})
    assert seen == [(cfg["n"], public.proj_dim)]  # clipped and noised in d coordinates
    p = public.proj
    assert w_hat.shape == (48,) and np.linalg.norm(w_hat - p @ (p.T @ w_hat)) < 1e-10
    assert S.excess_risk(w_hat, w) < S.excess_risk(np.zeros_like(w), w)


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
    assert mean["dpsgd_subspace"] < mean["dpsgd"]  # the public subspace is what helps
    assert mean["least_squares"] < mean["zero"]
    dp = df[df.method.isin(S.METHODS)]
    assert (dp.epsilon == 1.0).all() and (dp.epsilon_spent <= 1.0).all()
    assert set(dp.adjacency) == {"add_remove"} and set(dp.noise_source) == {"keyed"}
    assert set(dp[dp.method != "dpdeepsets"].accountant) == {"rdp"}
    assert set(dp[dp.method == "dpdeepsets"].accountant) == {"analytic_gaussian"}
    assert set(df[df.method == "zero"].epsilon) == {math.inf}
    for baseline in S.BASELINES:
        ratio = S.ratio_table(df, baseline)
        assert ratio.loc[48, 1.0] == pytest.approx(mean["dpdeepsets"] / mean[baseline])
    # one choice per (method, epsilon) (the shift's epsilon is 1 too)
    assert small_run.tuning.groupby("method").chosen.sum().to_dict() == {
        "dpsgd": 1, "dpsgd_subspace": 1}


def test_ratio_intervals_are_paired_over_repetitions():
    rows = []
    for rep, (a, b) in enumerate([(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]):
        rows += [{"D": 8, "epsilon": 1.0, "rep": rep, "method": "dpdeepsets", "excess_risk": a},
                 {"D": 8, "epsilon": 1.0, "rep": rep, "method": "dpsgd", "excess_risk": b}]
    df = pd.DataFrame(rows)
    r = S.ratio_intervals(df, "dpsgd").iloc[0]
    # a = b / 2 in every repetition: the ratio is exactly 0.5 whatever the spread of b
    assert r.ratio == pytest.approx(0.5) and r.lo == pytest.approx(0.5) and r.hi == pytest.approx(0.5)
    df.loc[(df.method == "dpdeepsets") & (df.rep == 0), "excess_risk"] = 2.0
    r = S.ratio_intervals(df, "dpsgd").iloc[0]
    assert r.ratio == pytest.approx(7 / 12) and r.lo < r.ratio < r.hi and r.reps == 3


def test_every_private_run_has_its_own_noise_cell(key_file, monkeypatch):
    identities = []
    real = S.experiment.noise_factory

    def recording(*args):
        make, info = real(*args)

        def wrapped(**fields):
            identities.append(tuple(sorted(fields.items())))
            return make(**fields)
        return wrapped, info

    monkeypatch.setattr(S.experiment, "noise_factory", recording)
    cfg = tiny_cfg()
    S.run_experiment(cfg, key_file=key_file)
    private = [i for i in identities if dict(i)["purpose"] == "private"]
    reps, cells = cfg["repetitions"], len(cfg["epsilons"]) + len(cfg["shift_degrees"])
    assert len(private) == len(set(private)) == 3 * reps * cells  # 3 private methods
    tuning = {i for i in identities if dict(i)["purpose"] == "public_tuning"}
    assert tuning.isdisjoint(private)


def test_same_key_same_results_other_key_other_noise(key_file, tmp_path):
    cfg = tiny_cfg()
    a = S.run_experiment(cfg, key_file=key_file)
    b = S.run_experiment(cfg, key_file=key_file)
    pd.testing.assert_frame_equal(a.excess, b.excess)
    pd.testing.assert_frame_equal(a.shift, b.shift)
    pd.testing.assert_frame_equal(a.tuning, b.tuning)
    c = S.run_experiment(cfg, key_file=noise.create_key(tmp_path / "other.key"))
    for method in S.METHODS:
        ra = a.excess[a.excess.method == method].excess_risk.to_numpy()
        rc = c.excess[c.excess.method == method].excess_risk.to_numpy()
        assert np.all(ra != rc), method  # every release / run got other noise
    refs = a.excess.method.isin(S.REFERENCES)
    pd.testing.assert_frame_equal(a.excess[refs], c.excess[refs])  # the data are the same
    assert a.noise["key_fingerprint"] != c.noise["key_fingerprint"]
    # nothing written holds the key or a seed
    key_hex = Path(key_file).read_text().strip()
    text = S.format_tables(a.excess, a.shift, a.public, a.noise)
    assert key_hex not in text and key_hex not in a.excess.to_csv()
    assert not [c for c in a.excess.columns if "seed" in c]


def test_keyed_needs_a_key_and_secure_is_never_reproducible():
    cfg = tiny_cfg()
    with pytest.raises(NoiseKeyError, match="key"):
        S.run_experiment(cfg)
    cfg["noise"] = "secure"
    a, b = S.run_experiment(cfg), S.run_experiment(cfg)
    dp = a.excess.method.isin(S.METHODS)
    assert set(a.excess[dp].noise_source) == {"secure"}
    assert not np.allclose(a.excess[dp].excess_risk, b.excess[dp].excess_risk)


def test_k_must_be_smaller_than_d(key_file):
    with pytest.raises(ValueError, match="synthetic.k"):
        S.run_experiment(small_cfg(k=48), key_file=key_file)


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
  dpsgd: {epochs: 2, batch_size: 128, clip_grid: [0.3, 1], lr_grid: [0.1], tune_tasks: 1,
          accountant: gdp}
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
        "dpdeepsets", "dpsgd", "dpsgd_subspace", "least_squares", "zero", "oracle_subspace_ls"}
    assert len(pd.read_csv(out / "shift.csv")) == 2 * 2 * 6
    for png in ["excess_risk.png", "shift.png"]:
        assert (out / png).stat().st_size > 1000
    assert "Ratio mean DP-DeepSets / mean dpsgd_subspace" in proc.stdout  # the tables are printed
    key = results / ".secret" / "noise.key"  # rule noise_key made it (privacy.key_file: null)
    assert key.stat().st_mode & 0o077 == 0
    assert key.read_text().strip() not in (out / "summary.txt").read_text()
