"""Empirical privacy audit of the release (dpdeepsets.privacy_audit): it passes, and it can fail."""

import math
from pathlib import Path

import numpy as np
import pytest

from dpdeepsets import privacy_audit as A
from dpdeepsets import privacy as P
from dpdeepsets.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "config" / "config.yaml")
PR = CFG["privacy"]
N = CFG["subsets"]["set_size"]
DIM = CFG["embedder"]["dim"]
GRID = [float(e) for e in PR["epsilons"] if math.isfinite(float(e))]
COMMON = dict(delta=PR["delta"], n=N, clip_norm=PR["clip_norm"], adjacency=PR["adjacency"])


def test_default_grid_is_what_the_audit_covers():
    assert GRID, "the default config has no finite epsilon to audit"
    assert {0.25, 1.0, 4.0} <= set(GRID), "the sigma-halved tests below assume these grid points"


@pytest.mark.parametrize("eps", GRID)
def test_lower_bound_never_exceeds_claim_at_default_grid(eps):
    r = A.audit_release(eps, trials=200_000, seed=11, dim=DIM, **COMMON)
    assert r["eval_trials"] >= 100_000
    assert r["mean_gap"] == pytest.approx(r["sensitivity"], rel=1e-9)  # the pair is worst case
    assert 0.0 <= r["epsilon_lower_bound"] <= eps, r
    assert not r["caught"]


@pytest.mark.parametrize("eps", [0.5, 2.0, 8.0])
def test_lower_bound_never_exceeds_claim_add_remove(eps):
    r = A.audit_release(eps, PR["delta"], N, PR["clip_norm"], "add_remove", 200_000, 5, dim=DIM)
    assert r["sensitivity"] == pytest.approx(PR["clip_norm"] / N)
    assert r["mean_gap"] == pytest.approx(r["sensitivity"], rel=1e-9)
    assert r["epsilon_lower_bound"] <= eps, r


@pytest.mark.parametrize("eps", [0.25, 1.0, 4.0])
def test_audit_catches_halved_sigma(eps):
    r = A.audit_release(eps, trials=1_000_000, seed=3, sigma_scale=0.5, dim=DIM, **COMMON)
    assert r["sigma"] == pytest.approx(0.5 * r["sigma_ledger"])
    assert r["caught"] and r["epsilon_lower_bound"] > eps, r


def test_audit_catches_halved_sigma_add_remove():
    r = A.audit_release(1.0, PR["delta"], N, PR["clip_norm"], "add_remove", 1_000_000, 3,
                        sigma_scale=0.5, dim=DIM)
    assert r["epsilon_lower_bound"] > 1.0, r


def test_audit_is_powerless_above_its_ceiling():
    # Documented limitation: ~1e5 evaluation trials cannot certify more than ~10, so a
    # broken mechanism at a large claimed epsilon passes.
    r = A.audit_release(64.0, trials=200_000, seed=3, sigma_scale=0.5, dim=DIM, **COMMON)
    assert r["epsilon_ceiling"] < 11
    assert r["epsilon_lower_bound"] <= r["epsilon_ceiling"] + 1e-12
    assert not r["caught"]


@pytest.mark.parametrize("adjacency", P.ADJACENCIES)
@pytest.mark.parametrize("eps", GRID)
def test_audit_sigma_is_the_ledger_sigma_of_a_real_release(eps, adjacency):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM))
    _, ledger = P.release_clipped_mean(x, epsilon=eps, delta=PR["delta"], clip_norm=PR["clip_norm"],
                                       adjacency=adjacency, noise="seeded", seed=1)
    r = A.audit_release(eps, PR["delta"], N, PR["clip_norm"], adjacency, 1_000, 0, dim=DIM)
    assert r["sigma"] == ledger["sigma"] == r["sigma_ledger"]
    assert r["sensitivity"] == ledger["sensitivity"]


@pytest.mark.parametrize("eps", GRID)
def test_real_release_adds_the_ledger_noise(eps):
    r = A.check_release_noise(eps, releases=300, seed=int(eps * 100), dim=DIM, **COMMON)
    assert r["ok"], r
    assert r["sigma_empirical"] == pytest.approx(r["sigma_ledger"], rel=0.05)


def test_noise_check_catches_a_release_that_adds_half_the_noise():
    def half_noise_release(x, **kw):
        out, ledger = P.release_clipped_mean(x, **kw)
        clean = P.clip_rows(x, kw["clip_norm"]).mean(axis=0)
        return (clean + 0.5 * (out - clean)).astype(np.float32), ledger  # ledger still claims sigma

    r = A.check_release_noise(1.0, releases=300, seed=0, dim=DIM, release=half_noise_release, **COMMON)
    assert not r["ok"]
    assert r["sigma_empirical"] == pytest.approx(0.5 * r["sigma_ledger"], rel=0.05)


def test_audit_detects_a_ledger_that_disagrees_with_the_calibration(monkeypatch):
    monkeypatch.setattr(P, "release_clipped_mean", _release_with_sigma_factor(0.5))
    with pytest.raises(A.AuditError, match="ledger sigma"):
        A.audit_release(1.0, trials=1_000, seed=0, dim=DIM, **COMMON)


def _release_with_sigma_factor(f):
    orig = P.release_clipped_mean

    def release(x, **kw):
        out, ledger = orig(x, **kw)
        return out, dict(ledger, sigma=ledger["sigma"] * f)

    return release


def test_clopper_pearson_upper_matches_closed_forms():
    # k = 0: 1 - alpha^(1/n); k = n: 1
    for n, a in [(10, 0.05), (100_000, 0.025)]:
        assert A.clopper_pearson_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-9)
        assert A.clopper_pearson_upper(n, n, a) == 1.0
    # k = n - 1: the upper bound u solves 1 - u^n = alpha  ->  u = (1 - alpha)^(1/n)
    assert A.clopper_pearson_upper(9, 10, 0.05) == pytest.approx(0.95 ** 0.1, rel=1e-9)
    ks = np.array([0, 5, 50])
    assert np.all(np.diff(A.clopper_pearson_upper(ks, 100, 0.05)) > 0)


def test_epsilon_lower_bound_formula():
    d = 1e-5
    assert A.epsilon_lower_bound(0.01, 0.5, d) == pytest.approx(math.log((1 - d - 0.5) / 0.01))
    assert A.epsilon_lower_bound(0.5, 0.01, d) == pytest.approx(math.log((1 - d - 0.5) / 0.01))
    assert A.epsilon_lower_bound(0.6, 0.6, d) == 0.0  # a useless test proves nothing
    assert A.max_certifiable_epsilon(100_000, d) == pytest.approx(math.log(100_000 / math.log(40)), abs=0.01)


def test_audit_refuses_what_it_cannot_audit():
    with pytest.raises(ValueError, match="epsilon"):
        A.audit_release(math.inf, trials=1_000, seed=0, **COMMON)
    with pytest.raises(ValueError, match="trials"):
        A.audit_release(1.0, trials=2, seed=0, **COMMON)
    with pytest.raises(ValueError, match="sigma_scale"):
        A.audit_release(1.0, trials=1_000, seed=0, sigma_scale=0.0, **COMMON)
