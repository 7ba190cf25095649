"""Black-box audit of the release (dpdeepsets.privacy_audit.release) and the audit statistics.

The audit calls the real ``release_clipped_mean`` once per trial with keyed noise; it must
never catch the correct release (default grid and 16, 64, both adjacencies, neighbours of
different sizes), and it must catch each planted bug in a fast configuration
(eps 2.5, 12,000 trials per neighbour, where the power is largest for that budget).
"""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit
from scipy.stats import beta

from dpdeepsets import noise as N
from dpdeepsets import privacy as P
from dpdeepsets import privacy_audit as A
from dpdeepsets.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CFG = load_config(ROOT / "config" / "config.yaml")
PR = CFG["privacy"]
SET_SIZE = CFG["subsets"]["set_size"]
DIM = CFG["embedder"]["dim"]
GRID = [float(e) for e in PR["epsilons"] if math.isfinite(float(e))]
COMMON = dict(delta=PR["delta"], n=SET_SIZE, clip_norm=PR["clip_norm"])
BUG_EPS, BUG_TRIALS = 2.5, 12_000


def test_default_grid_is_what_the_audit_covers():
    assert GRID, "the default config has no finite epsilon to audit"


@pytest.mark.parametrize("neighbours", A.NEIGHBOURS)
def test_worst_case_neighbours_are_neighbours_at_the_sensitivity(neighbours):
    d, d_prime, u = A.worst_case_neighbours(neighbours, SET_SIZE, DIM, PR["clip_norm"], seed=1)
    sizes = {"replace": (SET_SIZE, SET_SIZE), "remove": (SET_SIZE, SET_SIZE - 1),
             "add": (SET_SIZE + 1, SET_SIZE)}[neighbours]
    assert (len(d), len(d_prime)) == sizes
    adjacency = A.NEIGHBOUR_ADJACENCY[neighbours]
    kw = dict(clip_norm=PR["clip_norm"], adjacency=adjacency, n=SET_SIZE)
    gap = P.clipped_mean_statistic(d, **kw) - P.clipped_mean_statistic(d_prime, **kw)
    sens = P.clipped_mean_sensitivity(SET_SIZE, PR["clip_norm"], adjacency)
    assert gap @ u == pytest.approx(sens, rel=1e-9)  # exactly the sensitivity, along u
    assert np.linalg.norm(gap - (gap @ u) * u) < 1e-12
    if neighbours != "replace":  # what the row-count bug gets wrong: ~2C/n
        wrong = P.clip_rows(d, PR["clip_norm"]).mean(0) - P.clip_rows(d_prime, PR["clip_norm"]).mean(0)
        assert wrong @ u > 1.95 * sens


@pytest.mark.parametrize("neighbours", A.NEIGHBOURS)
@pytest.mark.parametrize("eps", GRID + [16.0, 64.0])
def test_correct_release_is_never_caught(eps, neighbours):
    r = A.audit_release(eps, trials=1_000, neighbours=neighbours, dim=DIM, **COMMON)
    assert r["release"] == "release_clipped_mean" and r["eval_trials"] == 900
    assert r["sigma_ledger"] == P.analytic_gaussian_sigma(
        eps, PR["delta"], P.clipped_mean_sensitivity(SET_SIZE, PR["clip_norm"], r["adjacency"]))
    assert 0.0 <= r["epsilon_lower_bound"] <= min(eps, r["epsilon_ceiling"] + 1e-12), r
    assert not r["caught"]


@pytest.mark.parametrize("neighbours,release", [
    ("replace", A.release_sigma_halved),
    ("remove", A.release_row_count_mean),
    ("add", A.release_row_count_mean),
])
def test_planted_bugs_are_caught(neighbours, release):
    r = A.audit_release(BUG_EPS, trials=BUG_TRIALS, neighbours=neighbours, release=release,
                        dim=DIM, **COMMON)
    assert r["caught"] and r["epsilon_lower_bound"] > BUG_EPS, r
    # the bug is invisible in the ledger: it claims what the correct release claims
    correct = P.analytic_gaussian_sigma(BUG_EPS, PR["delta"], P.clipped_mean_sensitivity(
        SET_SIZE, PR["clip_norm"], r["adjacency"]))
    assert r["sigma_ledger"] == correct


def test_correct_release_at_the_bug_configuration_is_not_caught():
    """The control of the test above: same epsilon, trials, neighbours, real release."""
    r = A.audit_release(BUG_EPS, trials=BUG_TRIALS, neighbours="remove", dim=DIM, **COMMON)
    assert not r["caught"] and r["epsilon_lower_bound"] < BUG_EPS - 0.5, r


def test_row_count_bug_is_the_correct_release_under_replace_one():
    x = A.worst_case_neighbours("replace", SET_SIZE, DIM, PR["clip_norm"])[0]
    kw = dict(epsilon=1.0, clip_norm=PR["clip_norm"], adjacency="replace_one",
              noise=N.KeyedNoise(A.AUDIT_KEY, {"t": 0}), delta=PR["delta"], n=SET_SIZE)
    a, la = P.release_clipped_mean(x, **kw)
    b, lb = A.release_row_count_mean(x, **kw)
    assert np.array_equal(a, b) and la == lb


@pytest.mark.parametrize("noise", ["keyed", "secure"])
@pytest.mark.parametrize("adjacency", P.ADJACENCIES)
@pytest.mark.parametrize("eps", GRID)
def test_real_release_adds_the_ledger_noise(eps, adjacency, noise):
    r = A.check_release_noise(eps, releases=150, adjacency=adjacency, noise=noise, dim=DIM, **COMMON)
    assert r["ok"] and r["private"], r
    assert r["sigma_empirical"] == pytest.approx(r["sigma_ledger"], rel=0.05)


def test_noise_check_catches_a_release_that_adds_half_the_noise():
    r = A.check_release_noise(1.0, releases=150, adjacency="add_remove", dim=DIM,
                              release=A.release_sigma_halved, **COMMON)
    assert not r["ok"]
    assert r["sigma_empirical"] == pytest.approx(0.5 * r["sigma_ledger"], rel=0.05)


def test_audit_refuses_what_it_cannot_audit():
    with pytest.raises(ValueError, match="epsilon"):
        A.audit_release(math.inf, trials=100, neighbours="remove", **COMMON)
    with pytest.raises(ValueError, match="trials"):
        A.audit_release(1.0, trials=2, neighbours="remove", **COMMON)
    with pytest.raises(ValueError, match="neighbours"):
        A.audit_release(1.0, trials=100, neighbours="swap", **COMMON)


# ---------------------------------------------------------------- the statistics

def test_clopper_pearson_upper_matches_closed_forms():
    for n, a in [(10, 0.05), (100_000, 0.025)]:  # k = 0: 1 - alpha^(1/n); k = n: 1
        assert A.clopper_pearson_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-9)
        assert A.clopper_pearson_upper(n, n, a) == 1.0
    # k = n - 1: the upper bound u solves 1 - u^n = alpha  ->  u = (1 - alpha)^(1/n)
    assert A.clopper_pearson_upper(9, 10, 0.05) == pytest.approx(0.95 ** 0.1, rel=1e-9)
    assert np.all(np.diff(A.clopper_pearson_upper(np.array([0, 5, 50]), 100, 0.05)) > 0)


def test_epsilon_lower_bound_formula():
    d = 1e-5
    assert A.epsilon_lower_bound(0.01, 0.5, d) == pytest.approx(math.log((1 - d - 0.5) / 0.01))
    assert A.epsilon_lower_bound(0.5, 0.01, d) == pytest.approx(math.log((1 - d - 0.5) / 0.01))
    assert A.epsilon_lower_bound(0.6, 0.6, d) == 0.0  # a useless test proves nothing
    assert A.max_certifiable_epsilon(100_000, d) == pytest.approx(math.log(100_000 / math.log(40)), abs=0.01)


@pytest.mark.parametrize("rule", ["gaussian", "empirical"])
def test_threshold_audit_is_valid_and_has_power_on_gaussians(rule):
    """Exact Gaussian mechanisms of known epsilon: the bound stays below the truth in (nearly)
    every repetition and rises when mu doubles."""
    d, rng = 1e-5, np.random.default_rng(0)
    mu = 1 / P.analytic_gaussian_sigma(3.0, d, 1.0)  # exactly (3, 1e-5)-DP
    ok = [A.threshold_audit(rng.standard_normal(4000) + mu, rng.standard_normal(4000), d, rule=rule)
          ["epsilon_lower_bound"] for _ in range(20)]
    bug = [A.threshold_audit(rng.standard_normal(4000) + 2 * mu, rng.standard_normal(4000), d, rule=rule)
           ["epsilon_lower_bound"] for _ in range(20)]
    assert max(ok) <= 3.0
    assert np.median(bug) > np.median(ok) + 1.0


def test_one_run_p_value_closed_forms():
    # delta = 0: the binomial tail P[Bin(r, q) >= v], q = e^eps / (1 + e^eps)
    q = math.exp(1) / (1 + math.exp(1))
    assert A.one_run_p_value(100, 10, 10, 1.0, 0.0) == pytest.approx(q ** 10, rel=1e-12)
    assert A.one_run_p_value(100, 3, 2, 1.0, 0.0) == pytest.approx(3 * q**2 * (1 - q) + q**3, rel=1e-12)
    # delta > 0, r = v = 2: the delta term is 2 m delta max(P[Bin = 1], (P[Bin = 1] + P[Bin = 0]) / 2)
    m, dl = 50, 1e-3
    p1, p0 = 2 * q * (1 - q), (1 - q) ** 2
    assert A.one_run_p_value(m, 2, 2, 1.0, dl) == pytest.approx(q**2 + 2 * m * dl * max(p1, (p1 + p0) / 2))
    assert A.one_run_p_value(m, 0, 0, 1.0, dl) == 1.0
    assert A.one_run_p_value(10**9, 10, 5, 1.0, 0.5) == 1.0  # capped


def test_one_run_epsilon_lower_bound_closed_forms():
    a = 0.05
    # delta = 0, all r guesses right: q^r = alpha -> eps = logit(alpha^(1/r))
    for r in (10, 100, 1000):
        assert A.one_run_epsilon_lower_bound(10 * r, r, r, 0.0, a) == pytest.approx(
            logit(a ** (1 / r)), abs=1e-5)
    # delta = 0: logit of the Clopper-Pearson lower bound on the accuracy v / r
    for r, v in [(100, 80), (1000, 700), (40, 30)]:
        assert A.one_run_epsilon_lower_bound(10 * r, r, v, 0.0, a) == pytest.approx(
            logit(beta.ppf(a, v, r - v + 1)), abs=1e-5)
    # chance-level guesses prove nothing; delta only weakens the bound
    assert A.one_run_epsilon_lower_bound(1000, 100, 50, 0.0, a) == 0.0
    assert A.one_run_epsilon_lower_bound(1000, 100, 90, 1e-3, a) < A.one_run_epsilon_lower_bound(
        1000, 100, 90, 0.0, a)
    assert A.one_run_max_certifiable_epsilon(10_000, 1e-5) > A.one_run_max_certifiable_epsilon(1000, 1e-5)


def test_one_run_audit_of_randomized_response():
    """eps-DP randomized response (each canary's bit reported truthfully with probability
    e^eps / (1 + e^eps)) is the worst case of the theorem: the bound approaches eps and
    exceeds it only with probability <= alpha (here in at most 3 of 20 repetitions)."""
    rng, eps, m = np.random.default_rng(1), 2.0, 20_000
    got = []
    for _ in range(20):
        inc = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(inc == truthful, 1.0, 0.0) + 1e-3 * rng.random(m)  # ties broken at random
        got.append(A.one_run_audit(scores, inc, delta=0.0)["epsilon_lower_bound"])
    assert sum(g > eps for g in got) <= 3 and max(got) < eps + 0.1, got
    assert np.median(got) > 0.85 * eps, got
