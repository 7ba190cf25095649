"""Tests for dpdeepsets.privacy against independent high-precision math.

The reference delta(eps) of the Gaussian mechanism is re-derived here with
mpmath at 60+ significant digits; it never calls the module's own formula.
"""

import json
import math
import warnings

import mpmath
import numpy as np
import pytest

from dpdeepsets import noise as N
from dpdeepsets import privacy as P
from dpdeepsets.privacy import PrivacyError

EPS_GRID = [2.0**-10, 2.0**-4, 2.0**-2, 1.0, 4.0, 16.0, 2.0**8, 2.0**10, 2.0**12]
DELTA_GRID = [1e-10, 1e-5, 1e-2]
SENS_GRID = [1e-3, 1.0, 7.5]


def mp_delta(eps, sigma, sens, dps=60):
    """Balle & Wang (2018) Thm 8, straight from the formula, in mpmath."""
    with mpmath.workdps(dps):
        e, s, d = mpmath.mpf(eps), mpmath.mpf(sigma), mpmath.mpf(sens)
        a = d / (2 * s)
        b = e * s / d
        phi = lambda x: mpmath.erfc(-x / mpmath.sqrt(2)) / 2  # noqa: E731
        val = phi(a - b) - mpmath.exp(e) * phi(-a - b)
        # cross-check the two CDF implementations inside mpmath itself
        val2 = mpmath.ncdf(a - b) - mpmath.exp(e) * mpmath.ncdf(-a - b)
        assert abs(val - val2) <= mpmath.mpf(10) ** (-dps + 15) * max(abs(val), mpmath.mpf(10) ** -300)
        return val


@pytest.fixture(scope="module")
def sigma_table():
    return {
        (e, d, s): P.analytic_gaussian_sigma(e, d, s)
        for e in EPS_GRID
        for d in DELTA_GRID
        for s in SENS_GRID
    }


# ---------------------------------------------------------------- calibration
@pytest.mark.parametrize("eps", EPS_GRID)
def test_analytic_sigma_is_valid_and_minimal(eps, sigma_table):
    for d in DELTA_GRID:
        for s in SENS_GRID:
            sigma = sigma_table[(eps, d, s)]
            assert math.isfinite(sigma) and sigma > 0
            # valid: true delta at the returned sigma does not exceed the target
            assert mp_delta(eps, sigma, s) <= mpmath.mpf(d) * (1 + mpmath.mpf("1e-9")), (eps, d, s)
            # minimal: 1e-6 less noise already violates the target
            assert mp_delta(eps, sigma * (1 - 1e-6), s) > d, (eps, d, s)


def test_gaussian_delta_matches_mpmath_including_huge_eps():
    checked = 0
    for eps in EPS_GRID + [3000.0]:
        for d in DELTA_GRID + [1e-100, 0.5]:
            base = P.analytic_gaussian_sigma(eps, d, 1.0)
            for factor in [0.25, 0.5, 0.9, 1.0, 1.1, 2.0, 4.0]:
                for sens in [1.0, 7.5]:
                    sigma = base * factor * sens
                    got = P.gaussian_delta(eps, sigma, sens)
                    assert not math.isnan(got) and 0.0 <= got <= 1.0
                    ref = mp_delta(eps, sigma, sens, dps=80)
                    if ref > mpmath.mpf("1e-300"):
                        rel = abs(mpmath.mpf(got) - ref) / ref
                        assert rel < 1e-8, (eps, sigma, sens, got, ref)
                        checked += 1
                    else:
                        assert got < 1e-290
    assert checked > 500
    # eps = 1024 / 4096 must neither overflow nor collapse to 0 / NaN
    for eps in [1024.0, 4096.0]:
        sigma = P.analytic_gaussian_sigma(eps, 1e-6, 1.0)
        got = P.gaussian_delta(eps, sigma, 1.0)
        assert 0.9e-6 < got <= 1e-6
        assert P.gaussian_delta(eps, sigma * 0.9, 1.0) > 1e-6


def test_gaussian_delta_edge_values():
    assert P.gaussian_delta(1.0, 0.0, 1.0) == 1.0  # no noise
    assert P.gaussian_delta(1.0, math.inf, 1.0) == 0.0
    assert P.gaussian_delta(math.inf, 1.0, 1.0) == 0.0
    # eps = 0: delta = P(|Z| < Delta / (2 sigma))
    assert P.gaussian_delta(0.0, 2.0, 1.0) == pytest.approx(float(mpmath.erf(0.25 / mpmath.sqrt(2))), rel=1e-12)
    with pytest.raises(PrivacyError, match="epsilon"):
        P.gaussian_delta(-1.0, 1.0, 1.0)
    with pytest.raises(PrivacyError, match="sigma"):
        P.gaussian_delta(1.0, -1.0, 1.0)


def test_classical_never_smaller_for_eps_below_one():
    for eps in [2.0**-10, 2.0**-6, 2.0**-4, 2.0**-2, 0.5, 0.75, 0.99]:
        for d in [1e-12, 1e-10, 1e-5, 1e-3, 1e-2, 0.1]:
            for s in SENS_GRID:
                assert P.classical_gaussian_sigma(eps, d, s) >= P.analytic_gaussian_sigma(eps, d, s)
    # and for large eps the classical formula would under-noise (invalid there)
    assert P.gaussian_delta(16.0, P.classical_gaussian_sigma(16.0, 1e-5, 1.0), 1.0) > 1e-5


def test_sigma_linear_in_sensitivity_and_decreasing_in_eps(sigma_table):
    for e in EPS_GRID:
        for d in DELTA_GRID:
            base = sigma_table[(e, d, 1.0)]
            for s in SENS_GRID:
                assert sigma_table[(e, d, s)] == pytest.approx(s * base, rel=1e-10)
    for d in DELTA_GRID:
        sig = [sigma_table[(e, d, 1.0)] for e in EPS_GRID]
        assert all(a > b for a, b in zip(sig, sig[1:]))
    for e in EPS_GRID:  # and decreasing in delta
        sig = [sigma_table[(e, d, 1.0)] for d in DELTA_GRID]
        assert all(a > b for a, b in zip(sig, sig[1:]))


def test_inf_epsilon_is_zero_noise():
    assert P.analytic_gaussian_sigma(math.inf, 1e-5, 1.0) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0, delta=1e-5, sensitivity=1.0), "epsilon"),
        (dict(epsilon=-1.0, delta=1e-5, sensitivity=1.0), "epsilon"),
        (dict(epsilon=float("nan"), delta=1e-5, sensitivity=1.0), "epsilon"),
        (dict(epsilon=1.0, delta=0.0, sensitivity=1.0), "delta"),
        (dict(epsilon=1.0, delta=1.0, sensitivity=1.0), "delta"),
        (dict(epsilon=1.0, delta=-0.1, sensitivity=1.0), "delta"),
        (dict(epsilon=1.0, delta=float("nan"), sensitivity=1.0), "delta"),
        (dict(epsilon=1.0, delta=1e-5, sensitivity=0.0), "sensitivity"),
        (dict(epsilon=1.0, delta=1e-5, sensitivity=math.inf), "sensitivity"),
    ],
)
def test_calibration_refuses_bad_parameters(kwargs, match):
    with pytest.raises(PrivacyError, match=match):
        P.analytic_gaussian_sigma(**kwargs)


def test_privacy_error_is_value_error():
    assert issubclass(PrivacyError, ValueError)
    assert P.ADJACENCIES == ("add_remove", "replace_one")


# ------------------------------------------------------ sensitivity, clipping
def test_clipped_mean_sensitivity():
    assert P.clipped_mean_sensitivity(10, 3.0, "replace_one") == pytest.approx(0.6)
    assert P.clipped_mean_sensitivity(10, 3.0, "add_remove") == pytest.approx(0.3)
    assert P.clipped_mean_sensitivity(np.int64(4), 1.0, "replace_one") == 0.5
    with pytest.raises(PrivacyError, match="adjacency"):
        P.clipped_mean_sensitivity(10, 1.0, "swap")
    with pytest.raises(PrivacyError, match="n must"):
        P.clipped_mean_sensitivity(1, 1.0, "replace_one")
    with pytest.raises(PrivacyError, match="clip_norm"):
        P.clipped_mean_sensitivity(10, 0.0, "replace_one")
    with pytest.raises(PrivacyError, match="clip_norm"):
        P.clipped_mean_sensitivity(10, -1.0, "add_remove")


def test_sensitivity_bound_holds_empirically():
    """Worst-case neighbours never move the clipped mean further than Delta."""
    rng = np.random.default_rng(1)
    n, dim, c = 7, 5, 2.0
    for _ in range(200):
        x = rng.normal(size=(n, dim)) * rng.uniform(0.1, 10)
        y = x.copy()
        y[rng.integers(n)] = rng.normal(size=dim) * 100  # replace one row
        diff = np.linalg.norm(P.clip_rows(x, c).mean(0) - P.clip_rows(y, c).mean(0))
        assert diff <= P.clipped_mean_sensitivity(n, c, "replace_one") * (1 + 1e-12)
        # add one row, mean as sum / n with n public
        z = np.vstack([x, rng.normal(size=(1, dim)) * 100])
        diff = np.linalg.norm(P.clip_rows(z, c).sum(0) / n - P.clip_rows(x, c).sum(0) / n)
        assert diff <= P.clipped_mean_sensitivity(n, c, "add_remove") * (1 + 1e-12)


def test_clip_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)) * rng.uniform(0.01, 10, size=(50, 1))
    x[3] = 0.0
    c = 1.5
    y = P.clip_rows(x.astype(np.float32), c)
    norms = np.linalg.norm(y, axis=1)
    assert np.all(norms <= c)
    xn = np.linalg.norm(x.astype(np.float32).astype(np.float64), axis=1)
    small = xn <= c
    np.testing.assert_array_equal(y[small], x.astype(np.float32).astype(np.float64)[small])
    np.testing.assert_allclose(norms[~small], c, rtol=1e-12)
    # direction preserved
    cos = np.sum(y * x, axis=1)[~small] / (norms[~small] * xn[~small])
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    assert np.all(y[3] == 0.0)
    # input not modified in place
    assert np.linalg.norm(x, axis=1).max() > c


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_rows_refuses_nan_inf(bad):
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(PrivacyError, match="embeddings contain NaN or Inf"):
        P.clip_rows(x, 1.0)


def test_clip_rows_refuses_bad_shapes_and_norm():
    with pytest.raises(PrivacyError):
        P.clip_rows(np.ones(5), 1.0)
    with pytest.raises(PrivacyError):
        P.clip_rows(np.ones((2, 3, 4)), 1.0)
    with pytest.raises(PrivacyError):
        P.clip_rows(np.ones((0, 3)), 1.0)
    with pytest.raises(PrivacyError, match="clip_norm"):
        P.clip_rows(np.ones((2, 3)), 0.0)


# ------------------------------------------------------------------- release
def _emb(n=20, dim=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


RELEASE_KW = dict(epsilon=1.0, delta=1e-5, clip_norm=1.0, adjacency="replace_one", n=20)
KEY = bytes(range(32))


def _keyed(key=KEY, **cell):
    return N.KeyedNoise(key, N.cell_identity(**({"pset": "p0", "epsilon": 1.0, "seed": 0} | cell)))


def test_release_keyed_is_reproducible_and_secret_secure_is_fresh():
    x = _emb()
    a, la = P.release_clipped_mean(x, **RELEASE_KW, noise=_keyed())
    b, _ = P.release_clipped_mean(x, **RELEASE_KW, noise=_keyed())
    c, _ = P.release_clipped_mean(x, **RELEASE_KW, noise=_keyed(seed=1))  # another cell
    d, _ = P.release_clipped_mean(x, **RELEASE_KW, noise=_keyed(key=bytes(32)))  # another key
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.dtype == np.float32 and a.shape == (8,)
    assert la["noise_source"] == "keyed" and la["key_fingerprint"] == N.key_fingerprint(KEY)
    s1, ls = P.release_clipped_mean(x, **RELEASE_KW, noise=N.SecureNoise())
    s2, _ = P.release_clipped_mean(x, **RELEASE_KW, noise=N.SecureNoise())
    assert not np.array_equal(s1, s2) and ls["noise_source"] == "secure"
    assert ls["private"] is True and la["private"] is True


def test_no_ledger_holds_a_seed_or_the_row_count():
    x = _emb(n=17)
    for src in (_keyed(), N.SecureNoise(), N.PublicSeedNoise(5)):
        _, led = P.release_clipped_mean(x, **{**RELEASE_KW, "adjacency": "add_remove"}, noise=src)
        text = json.dumps(led).lower()
        assert "seed" not in {k.lower() for k in led} and "5" not in str(led.get("noise_source"))
        assert led["n"] == 20  # the public n, never the 17 rows the set really has
        assert 17 not in [v for v in led.values() if isinstance(v, int)]
        assert KEY.hex() not in text


def test_public_seed_release_says_it_is_not_private():
    _, led = P.release_clipped_mean(_emb(), **RELEASE_KW, noise=N.PublicSeedNoise(0))
    assert led["private"] is False and "NOT private" in led["noise_source"]


def test_add_remove_neighbours_of_different_sizes_stay_within_the_claimed_sensitivity():
    """Real neighbours: D with n rows, D' = D minus its largest row (n - 1 rows), through the
    release itself (epsilon = inf returns the statistic without noise). Dividing by the row
    count (the old code) moves the mean by up to 2C/n and fails this test."""
    rng = np.random.default_rng(3)
    n, dim, c = 16, 6, 1.0
    claimed = P.release_clipped_mean(_emb(n, dim), epsilon=1.0, delta=1e-5, clip_norm=c,
                                     adjacency="add_remove", n=n, noise=_keyed())[1]["sensitivity"]
    assert claimed == pytest.approx(c / n)
    worst = 0.0
    for _ in range(300):
        x = rng.normal(size=(n, dim)) * rng.uniform(0.01, 10, size=(n, 1))
        x[0] = 100 * rng.normal(size=dim)  # a row far out: clipped to norm C
        kw = dict(epsilon=math.inf, delta=1e-5, clip_norm=c, adjacency="add_remove", n=n,
                  noise=_keyed())
        full, _ = P.release_clipped_mean(x, **kw)
        for drop in (0, 1):  # remove the far row, or an ordinary one
            fewer, _ = P.release_clipped_mean(np.delete(x, drop, axis=0), **kw)
            worst = max(worst, float(np.linalg.norm(full.astype(np.float64) - fewer)))
        more, _ = P.release_clipped_mean(np.vstack([x, 50 * rng.normal(size=(1, dim))]), **kw)
        worst = max(worst, float(np.linalg.norm(full.astype(np.float64) - more)))
    assert worst <= claimed * (1 + 1e-6), (worst, claimed)
    assert worst > 0.9 * claimed  # the test does reach the bound


def test_replace_one_needs_exactly_n_rows():
    with pytest.raises(PrivacyError, match="exactly n=20"):
        P.release_clipped_mean(_emb(n=19), **RELEASE_KW, noise=_keyed())


def test_release_noise_std_matches_sigma():
    x = _emb(n=10, dim=64)
    clean = P.clip_rows(x, 1.0).mean(axis=0)
    diffs = np.empty((2000, 64))
    for i in range(2000):
        out, ledger = P.release_clipped_mean(x, **{**RELEASE_KW, "n": 10}, noise=_keyed(seed=i))
        diffs[i] = out.astype(np.float64) - clean
    sigma = ledger["sigma"]
    assert abs(diffs.mean()) < 0.02 * sigma
    assert diffs.std() == pytest.approx(sigma, rel=0.03)


def test_ledger_contents_and_self_consistency():
    x = _emb(n=25, dim=4)
    for adj in P.ADJACENCIES:
        _, led = P.release_clipped_mean(x, epsilon=2.0, delta=1e-6, clip_norm=0.5, adjacency=adj,
                                        n=25, noise=_keyed())
        assert set(led) == {
            "n", "dim", "clip_norm", "adjacency", "sensitivity", "epsilon", "delta",
            "sigma", "mechanism", "noise_source", "key_fingerprint", "private",
        }
        assert led["n"] == 25 and led["dim"] == 4 and led["adjacency"] == adj
        assert led["sensitivity"] == P.clipped_mean_sensitivity(25, 0.5, adj)
        assert led["sigma"] == P.analytic_gaussian_sigma(led["epsilon"], led["delta"], led["sensitivity"])
        assert mp_delta(led["epsilon"], led["sigma"], led["sensitivity"]) <= led["delta"] * (1 + 1e-9)
        assert led["private"] is True and led["mechanism"] == "analytic_gaussian"
        json.dumps(led, allow_nan=False)


def test_release_inf_epsilon_is_nonprivate_reference():
    x = _emb()
    out, led = P.release_clipped_mean(x, **{**RELEASE_KW, "epsilon": math.inf}, noise=_keyed())
    assert led["sigma"] == 0.0 and led["private"] is False
    assert led["mechanism"].startswith("none")
    np.testing.assert_allclose(out, P.clip_rows(x, 1.0).mean(0).astype(np.float32))


def test_release_refusals():
    x = _emb()
    with pytest.raises(PrivacyError, match="epsilon"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "epsilon": 0.0}, noise=N.SecureNoise())
    with pytest.raises(PrivacyError, match="delta"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "delta": 1.0}, noise=N.SecureNoise())
    with pytest.raises(PrivacyError, match="clip_norm"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "clip_norm": 0.0}, noise=N.SecureNoise())
    with pytest.raises(PrivacyError, match="adjacency"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "adjacency": "both"}, noise=N.SecureNoise())
    with pytest.raises(PrivacyError, match="n must"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "n": 1}, noise=N.SecureNoise())
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PrivacyError, match="embeddings contain NaN or Inf"):
        P.release_clipped_mean(bad, **RELEASE_KW, noise=N.SecureNoise())


def test_large_delta_warns():
    x = _emb(n=20)
    with pytest.warns(UserWarning, match="delta"):
        P.release_clipped_mean(x, **{**RELEASE_KW, "delta": 0.05}, noise=N.SecureNoise())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.release_clipped_mean(x, **{**RELEASE_KW, "delta": 0.049}, noise=N.SecureNoise())


# --------------------------------------------------------------- composition
def test_gdp_mu_composition():
    assert P.gdp_mu([(0.3, 2.0)] * 9) == pytest.approx(3 * 0.3 / 2.0, rel=1e-14)
    assert P.gdp_mu([(3.0, 4.0), (4.0, 3.0)]) == pytest.approx(math.hypot(0.75, 4 / 3))
    assert P.gdp_mu([(1.0, 1.0), (1.0, 0.0)]) == math.inf


def test_gdp_delta_matches_dong_roth_su_formula():
    for mu in [0.01, 0.5, 1.0, 3.0, 10.0]:
        for eps in [0.0, 0.1, 1.0, 5.0, 20.0]:
            with mpmath.workdps(60):
                m, e = mpmath.mpf(mu), mpmath.mpf(eps)
                ref = mpmath.ncdf(-e / m + m / 2) - mpmath.exp(e) * mpmath.ncdf(-e / m - m / 2)
            got = P.gdp_delta(mu, eps)
            if ref > mpmath.mpf("1e-300"):
                assert abs(mpmath.mpf(got) - ref) / ref < 1e-8, (mu, eps)
    assert P.gdp_delta(math.inf, 1.0) == 1.0
    assert P.gdp_delta(0.0, 1.0) == 0.0


@pytest.mark.parametrize("eps", EPS_GRID)
def test_single_release_round_trip(eps):
    for d in DELTA_GRID:
        sens = 0.2
        sigma = P.analytic_gaussian_sigma(eps, d, sens)
        mu = P.gdp_mu([(sens, sigma)])
        assert P.gdp_epsilon(mu, d) == pytest.approx(eps, rel=1e-6)


def test_gdp_epsilon_satisfies_delta_and_is_tight():
    for mu in [1e-3, 0.1, 0.5, 1.0, 2.0, 8.0, 30.0]:
        for d in [1e-12, 1e-6, 1e-3, 0.2]:
            e = P.gdp_epsilon(mu, d)
            assert P.gdp_delta(mu, e) <= d
            if e > 0:
                assert P.gdp_delta(mu, e * (1 - 1e-6)) > d
    assert P.gdp_epsilon(math.inf, 1e-5) == math.inf
    assert P.gdp_epsilon(1e-9, 1e-5) == 0.0  # already (0, delta)-DP


def test_composition_of_k_releases():
    x = _emb(n=30, dim=4)
    ledgers = [P.release_clipped_mean(x, **{**RELEASE_KW, "n": 30}, noise=_keyed(seed=i))[1]
               for i in range(4)]
    comp = P.compose_releases(ledgers, 1e-5)
    assert set(comp) == {"n_releases", "mu", "epsilon", "delta"}
    sens, sigma = ledgers[0]["sensitivity"], ledgers[0]["sigma"]
    assert comp["n_releases"] == 4
    assert comp["mu"] == pytest.approx(2 * sens / sigma, rel=1e-14)
    # k releases cost more than one but less than k times (advanced composition)
    assert 1.0 < comp["epsilon"] < 4.0
    # identical to a single Gaussian release with sigma / sqrt(k)
    assert comp["epsilon"] == pytest.approx(P.gdp_epsilon(P.gdp_mu([(sens, sigma / 2)]), 1e-5))
    # a non-private entry makes the composition non-private
    _, ref = P.release_clipped_mean(x, **{**RELEASE_KW, "n": 30, "epsilon": math.inf}, noise=_keyed())
    assert P.compose_releases(ledgers + [ref], 1e-5)["epsilon"] == math.inf
    mixed = ledgers + [{**ledgers[0], "adjacency": "add_remove"}]
    with pytest.raises(PrivacyError, match="adjacenc"):
        P.compose_releases(mixed, 1e-5)
    with pytest.raises(PrivacyError):
        P.compose_releases([], 1e-5)


# ------------------------------------------------ optional external cross-check
CROSS = [(0.1, 1e-5), (1.0, 1e-5), (1.0, 1e-10), (4.0, 1e-3), (16.0, 1e-6), (256.0, 1e-5)]


def test_cross_check_dp_accounting_calibration():
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import accountant, common

    for eps, d in CROSS:
        ours = P.analytic_gaussian_sigma(eps, d, 1.0)
        assert ours == pytest.approx(dp_accounting.get_sigma_gaussian(eps, d), rel=1e-3)
        theirs = accountant.get_smallest_gaussian_noise(
            common.DifferentialPrivacyParameters(eps, d), sensitivity=2.5
        )
        assert P.analytic_gaussian_sigma(eps, d, 2.5) == pytest.approx(theirs, rel=1e-3)
        assert P.gdp_epsilon(1.0 / ours, d) == pytest.approx(
            dp_accounting.get_epsilon_gaussian(ours, d), rel=1e-3
        )


def test_cross_check_dp_accounting_pld_composition():
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant

    for eps, d, k in [(1.0, 1e-5, 4), (0.5, 1e-6, 10)]:
        noise_multiplier = P.analytic_gaussian_sigma(eps, d, 1.0)
        acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(noise_multiplier), k)
        pld_eps = acc.get_epsilon(d)
        ours = P.compose_releases([{"sensitivity": 1.0, "sigma": noise_multiplier}] * k, d)["epsilon"]
        # PLD is a (slightly pessimistic) discretisation of the same exact curve
        assert ours == pytest.approx(pld_eps, rel=1e-3)


# ------------------------------------------------------------------- DP-SGD
def test_full_batch_dpsgd_is_exactly_gaussian_and_matches_mpmath():
    """q = 1: T steps of noise multiplier z are one Gaussian mechanism with sigma z/sqrt(T)."""
    for eps, steps in [(0.25, 20), (1.0, 40), (4.0, 10), (64.0, 200), (1024.0, 20)]:
        z = P.dpsgd_noise_multiplier(eps, 1e-5, 1.0, steps, "gdp")
        sigma1 = z / math.sqrt(steps)
        assert mp_delta(eps, sigma1, 1.0) <= mpmath.mpf(1e-5) * (1 + mpmath.mpf("1e-9"))
        assert mp_delta(eps, sigma1 * (1 - 1e-6), 1.0) > 1e-5
        assert P.dpsgd_epsilon(z, 1.0, steps, 1e-5, "gdp") == pytest.approx(eps, rel=1e-6)


def test_dpsgd_calibration_agrees_with_dp_accounting():
    """opacus' accountants (through the privacy module) vs Google's dp-accounting."""
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import RdpAccountant

    for eps, q, steps in [(1.0, 0.25, 40), (4.0, 0.5, 20)]:
        for acc in ("prv", "rdp"):
            z = P.dpsgd_noise_multiplier(eps, 1e-5, q, steps, acc)
            event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
            ref = (RdpAccountant() if acc == "rdp"
                   else pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4))
            ref.compose(event)
            theirs = ref.get_epsilon(1e-5)
            assert theirs <= eps * 1.02, (acc, eps, theirs)  # the target holds independently
            assert theirs >= eps * 0.9, (acc, eps, theirs)  # and the noise is not wasted


def test_dpsgd_refusals_and_accountant_choice():
    with pytest.raises(PrivacyError, match="gdp accountant is exact for full-batch"):
        P.dpsgd_noise_multiplier(1.0, 1e-5, 0.5, 10, "gdp")
    with pytest.raises(PrivacyError, match="sample_rate"):
        P.dpsgd_epsilon(1.0, 1.5, 10, 1e-5, "rdp")
    assert P.resolve_accountant("auto", 1024, 1.0, 64) == "gdp"
    assert P.resolve_accountant("auto", 16, 0.5, 64) == "prv"
    assert P.resolve_accountant("auto", 1024, 0.5, 64) == "rdp"


def test_compose_ledger_exact_for_gaussians_and_rdp_with_subsampling():
    x = _emb(n=30, dim=4)
    rel = [P.release_clipped_mean(x, **{**RELEASE_KW, "n": 30, "adjacency": "add_remove"},
                                  noise=_keyed(seed=i))[1] for i in range(3)]
    z = P.dpsgd_noise_multiplier(1.0, 1e-5, 1.0, 20, "gdp")
    full = {"adjacency": "add_remove", "private": True, "mechanism": "dp-sgd (x)",
            "noise_multiplier": z, "sample_rate": 1.0, "steps": 20}
    c = P.compose_ledger(rel + [full], 1e-5)
    assert c["composition"].startswith("gaussian DP (exact)")
    mu = math.sqrt(sum((r["sensitivity"] / r["sigma"]) ** 2 for r in rel) + 20 / z**2)
    assert c["epsilon"] == pytest.approx(P.gdp_epsilon(mu, 1e-5), rel=1e-9)
    sub = {**full, "sample_rate": 0.25, "noise_multiplier": P.dpsgd_noise_multiplier(1.0, 1e-5, 0.25, 20, "rdp")}
    c2 = P.compose_ledger(rel + [sub], 1e-5)
    assert c2["composition"].startswith("renyi")
    assert c2["epsilon"] > max(c["epsilon"] * 0.5, 1.0)  # at least the larger part
    with pytest.raises(PrivacyError, match="mix adjacencies"):
        P.compose_ledger(rel + [{**full, "adjacency": "replace_one"}], 1e-5)
    assert P.compose_ledger(rel + [{**full, "private": False}], 1e-5)["epsilon"] == math.inf
