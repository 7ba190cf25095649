"""All privacy arithmetic of DP-DeepSets, in one auditable module.

What is private, what is public
-------------------------------
The private object is one *set* of embeddings (n rows of dimension d, one row
per individual).  The only thing released about it is the clipped mean, via
the Gaussian mechanism (:func:`release_clipped_mean`).  Public: n, d, the clip
norm C, epsilon, delta, the adjacency notion, sigma, and the code.

Adjacency
---------
``"add_remove"`` (the default, and what opacus certifies for DP-SGD): neighbouring
sets differ by adding or removing one row, so their sizes differ.  The released
statistic is ``sum of clipped rows / n`` with n a *public constant* (the configured
set size), never the actual row count: dividing by the row count would move the
mean by up to 2C/n when a row is removed, twice the sensitivity claimed.  The
actual row count is protected and never written to a ledger.
``"replace_one"``: neighbouring sets have the same size n and differ in one row;
the set must have exactly n rows and the sensitivity is 2C/n.

Private Evolution (:mod:`dpdeepsets.private_evolution`) releases something else about the
same kind of set: T noisy nearest-candidate vote histograms, calibrated by
:func:`pe_histogram_sigma`.

Noise
-----
The noise comes from a :class:`dpdeepsets.noise.NoiseSource` (a secret key and the
cell identity, or fresh OS entropy); nothing here derives randomness from public
values, and no ledger entry contains a seed.

Calibration
-----------
Noise is calibrated with the exact ("analytic") Gaussian mechanism of
Balle & Wang (2018, Thm. 8), not the classical sqrt(2 ln(1.25/delta))/epsilon
bound.  Several releases about the same private set are composed exactly with
Gaussian differential privacy (Dong, Roth & Su 2019): k Gaussian releases with
ratios Delta_i/sigma_i are mu-GDP with mu = sqrt(sum (Delta_i/sigma_i)^2).

DP-SGD (:func:`dpsgd_noise_multiplier`, :func:`dpsgd_epsilon`) is calibrated and
accounted here too, with opacus' PRV or RDP accountant (imported lazily), and every
release and fit of one private set is composed by :func:`compose_ledger`.

Pure numpy/scipy at import; opacus and dp-accounting only inside the functions that
need them.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable

import numpy as np
from scipy.special import erf, erfcx, ndtr

__all__ = [
    "PrivacyError",
    "ADJACENCIES",
    "gaussian_delta",
    "analytic_gaussian_sigma",
    "classical_gaussian_sigma",
    "clipped_mean_sensitivity",
    "clip_rows",
    "clipped_mean_statistic",
    "release_clipped_mean",
    "DPSGD_ACCOUNTANTS",
    "DPSGD_ADJACENCY",
    "resolve_accountant",
    "dpsgd_noise_multiplier",
    "dpsgd_epsilon",
    "gdp_mu",
    "gdp_delta",
    "gdp_epsilon",
    "compose_releases",
    "compose_ledger",
    "PE_HISTOGRAM_SENSITIVITY",
    "pe_histogram_sigma",
]

ADJACENCIES = ("add_remove", "replace_one")
DPSGD_ACCOUNTANTS = ("gdp", "prv", "rdp")
# Ledger mechanisms that are one Gaussian release of (sensitivity, sigma): DP-DeepSets' release,
# and Private Evolution's T vote histograms recorded as the equivalent single release.
GAUSSIAN_MECHANISMS = ("analytic_gaussian", "pe_vote_histogram")
DPSGD_ADJACENCY = "add_remove"  # what opacus' accountants certify under Poisson sampling

_SQRT2 = math.sqrt(2.0)
_REL_TOL = 1e-12  # relative width of the final bisection bracket
_MAX_ITER = 10_000  # safety net for the bracketing/bisection loops


class PrivacyError(ValueError):
    """Invalid privacy parameter (the message names the parameter and value)."""


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _real(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrivacyError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(v):
        raise PrivacyError(f"{name} must not be NaN, got {value!r}")
    return v


def _check_epsilon(epsilon, *, allow_zero: bool = False, allow_inf: bool = True) -> float:
    e = _real("epsilon", epsilon)
    if e < 0 or (e == 0 and not allow_zero) or (math.isinf(e) and not allow_inf):
        rng = "[0, inf]" if allow_zero else "(0, inf]"
        raise PrivacyError(f"epsilon must be in {rng}, got {epsilon!r}")
    return e


def _check_delta(delta) -> float:
    d = _real("delta", delta)
    if not 0.0 < d < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    return d


def _check_positive_finite(name: str, value) -> float:
    v = _real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise PrivacyError(f"{name} must be positive and finite, got {value!r}")
    return v


def _check_sigma(sigma) -> float:
    s = _real("sigma", sigma)
    if s < 0:
        raise PrivacyError(f"sigma must be >= 0, got {sigma!r}")
    return s


# --------------------------------------------------------------------------
# exact Gaussian mechanism
# --------------------------------------------------------------------------
def _log_gaussian_delta(epsilon: float, r: float) -> float:
    """log delta(epsilon) of the Gaussian mechanism with ratio r = Delta/sigma.

    delta = Phi(-t1) - e^eps Phi(-t2), t1 = eps/r - r/2, t2 = eps/r + r/2.
    Since t2^2/2 - t1^2/2 = eps exactly, e^eps Phi(-t2) =
    0.5 exp(-t1^2/2) erfcx(t2/sqrt2): the factor e^eps cancels analytically,
    so nothing overflows for large eps.  For t1 >= 0 (the small-delta regime)
    log delta = -t1^2/2 + log(0.5 (erfcx(t1/sqrt2) - erfcx(t2/sqrt2))),
    which never underflows; for t1 < 0, delta >= O(sqrt(eps)) and the direct
    difference is well conditioned.  t2 > 0 always (t2 > |t1|).
    """
    if r == 0.0 or epsilon == math.inf:
        return -math.inf
    if r == math.inf:
        return 0.0
    if epsilon == 0.0:  # delta(0) = P(|Z| < r/2)
        return math.log(erf(r / (2.0 * _SQRT2)))
    t1 = epsilon / r - r / 2.0
    t2 = epsilon / r + r / 2.0
    if t1 >= 0.0:
        diff = erfcx(t1 / _SQRT2) - erfcx(t2 / _SQRT2)
        return -0.5 * t1 * t1 + math.log(0.5 * diff) if diff > 0 else -math.inf
    val = ndtr(-t1) - 0.5 * math.exp(-0.5 * t1 * t1) * erfcx(t2 / _SQRT2)
    return math.log(val) if val > 0 else -math.inf


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Thm 8).

    delta(eps) = Phi(Delta/(2 sigma) - eps sigma/Delta)
                 - e^eps Phi(-Delta/(2 sigma) - eps sigma/Delta)

    for releasing f(D) + N(0, sigma^2 I) where ||f(D) - f(D')||_2 <= Delta for
    all adjacent D, D' (any adjacency; Delta must be the L2 sensitivity under
    it).  Evaluated in log space with the e^eps factor cancelled analytically
    (see ``_log_gaussian_delta``), so eps up to 2^12 and beyond neither
    overflows nor loses the answer; agrees with 60-digit arithmetic to ~1e-9
    relative whenever delta > 1e-300.  sigma = 0 gives 1, sigma = inf or
    eps = inf gives 0.  Returns max(0, value).
    """
    e = _check_epsilon(epsilon, allow_zero=True)
    s = _check_sigma(sigma)
    d = _check_positive_finite("sensitivity", sensitivity)
    r = math.inf if s == 0 else d / s
    return max(0.0, min(1.0, math.exp(_log_gaussian_delta(e, r))))


@lru_cache(maxsize=4096)
def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma such that the Gaussian mechanism is (epsilon, delta)-DP.

    Assumes ``sensitivity`` is the L2 sensitivity of the released statistic
    under the chosen adjacency.  delta(eps, sigma) is decreasing in sigma and
    depends on sigma only through sigma/Delta, so we bisect on log(sigma/Delta)
    to a relative bracket width of 1e-12 and return the *upper* end of the
    bracket, i.e. a sigma that satisfies gaussian_delta(eps, sigma, Delta) <=
    delta (checked again after multiplying by Delta).  Tested for eps in
    [2^-10, 2^12], delta in (0, 1).

    epsilon = inf returns 0.0: a non-private reference release, which the
    caller must record as such.  Raises PrivacyError for epsilon <= 0 or NaN,
    delta not in (0, 1), sensitivity <= 0 or non-finite.
    """
    e = _check_epsilon(epsilon)
    d = _check_delta(delta)
    sens = _check_positive_finite("sensitivity", sensitivity)
    if math.isinf(e):
        return 0.0
    log_target = math.log(d)

    def ok(log_s: float) -> bool:  # delta(eps, sigma = Delta * e^log_s) <= target
        return _log_gaussian_delta(e, math.exp(-log_s)) <= log_target

    lo = hi = 0.0  # log(sigma / Delta)
    for _ in range(_MAX_ITER):
        if ok(hi):
            break
        lo, hi = hi, hi + 1.0
    else:  # pragma: no cover - unreachable for valid inputs
        raise PrivacyError(f"could not bracket sigma for epsilon={epsilon!r}, delta={delta!r}")
    if lo == hi:
        for _ in range(_MAX_ITER):
            lo -= 1.0
            if not ok(lo):
                break
        else:  # pragma: no cover
            raise PrivacyError(f"could not bracket sigma for epsilon={epsilon!r}, delta={delta!r}")
    # invariant: ok(hi) and not ok(lo)
    while hi - lo > _REL_TOL:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    sigma = sens * math.exp(hi)
    for _ in range(64):  # guard against rounding in sens * exp(hi)
        if _log_gaussian_delta(e, sens / sigma) <= log_target:
            break
        sigma = math.nextafter(sigma, math.inf)
    return sigma


def classical_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Classical calibration sigma = Delta sqrt(2 ln(1.25/delta)) / epsilon.

    Dwork & Roth (2014, Thm A.1); only valid for epsilon < 1 and never tighter
    than :func:`analytic_gaussian_sigma`.  Kept for comparison in tests only;
    the pipeline never uses it.
    """
    e = _check_epsilon(epsilon, allow_inf=False)
    d = _check_delta(delta)
    sens = _check_positive_finite("sensitivity", sensitivity)
    return sens * math.sqrt(2.0 * math.log(1.25 / d)) / e


# --------------------------------------------------------------------------
# clipping and sensitivity
# --------------------------------------------------------------------------
def clipped_mean_sensitivity(n: int, clip_norm: float, adjacency: str) -> float:
    """L2 sensitivity of the mean of n rows, each clipped to L2 norm <= C.

    replace_one: 2C/n (one row changes, ||x - x'|| <= 2C, n fixed).
    add_remove: C/n (the sum changes by one row of norm <= C).  Valid only
    for the statistic of :func:`clipped_mean_statistic`: the clipped sum
    divided by a fixed, public n, whatever the actual number of rows.
    Raises PrivacyError for n < 2, C <= 0 or non-finite, unknown adjacency.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise PrivacyError(f"n must be an integer >= 2, got {n!r}")
    c = _check_positive_finite("clip_norm", clip_norm)
    if adjacency == "replace_one":
        return 2.0 * c / int(n)
    if adjacency == "add_remove":
        return c / int(n)
    raise PrivacyError(f"adjacency must be one of {ADJACENCIES}, got {adjacency!r}")


def clip_rows(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Return a float64 copy of x with every row scaled to L2 norm <= C.

    Rows with norm <= C are unchanged; longer rows are scaled by C/norm (zero
    rows are never divided by).  After scaling, rows whose float64 norm still
    exceeds C by rounding are shrunk by one ulp-sized step until it does not,
    so the sensitivity bound holds for the computed norms.
    Raises PrivacyError for non-2D or empty input, NaN/Inf entries, C <= 0.
    """
    c = _check_positive_finite("clip_norm", clip_norm)
    a = np.asarray(x)
    if a.ndim != 2:
        raise PrivacyError(f"embeddings must be a 2-D array, got shape {a.shape}")
    if a.size == 0:
        raise PrivacyError(f"embeddings must be non-empty, got shape {a.shape}")
    a = np.array(a, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(a)):
        raise PrivacyError("embeddings contain NaN or Inf")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(a, axis=1)
    if not np.all(np.isfinite(norms)):
        raise PrivacyError("embeddings have a row norm that overflows float64")
    over = norms > c
    a[over] *= (c / norms[over])[:, None]
    for _ in range(8):
        over = np.linalg.norm(a, axis=1) > c
        if not over.any():
            break
        a[over] *= 1.0 - 4.0 * np.finfo(np.float64).eps
    return a


# --------------------------------------------------------------------------
# the release
# --------------------------------------------------------------------------
def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise PrivacyError(f"n must be an integer >= 2, got {n!r}")
    return int(n)


def clipped_mean_statistic(embeddings: np.ndarray, *, clip_norm: float, adjacency: str,
                           n: int) -> np.ndarray:
    """The released statistic before noise: the sum of the clipped rows divided by n.

    ``n`` is public: the configured set size, not the number of rows.  Under
    ``replace_one`` the set must have exactly n rows (sensitivity 2C/n).  Under
    ``add_remove`` any number of rows >= 1 is accepted and the divisor stays n, so
    adding or removing one row moves the statistic by at most C/n, the sensitivity
    :func:`clipped_mean_sensitivity` claims (tests build neighbours of different
    sizes and check it through :func:`release_clipped_mean`).
    Returns float64 of shape (d,).
    """
    n = _check_n(n)
    if adjacency not in ADJACENCIES:
        raise PrivacyError(f"adjacency must be one of {ADJACENCIES}, got {adjacency!r}")
    clipped = clip_rows(embeddings, clip_norm)
    if adjacency == "replace_one" and clipped.shape[0] != n:
        raise PrivacyError(f"replace_one adjacency needs a set of exactly n={n} rows "
                           f"(the public set size), got {clipped.shape[0]}")
    return clipped.sum(axis=0) / n


def release_clipped_mean(
    embeddings: np.ndarray,
    *,
    epsilon: float,
    delta: float,
    clip_norm: float,
    adjacency: str,
    n: int,
    noise,
) -> tuple[np.ndarray, dict]:
    """THE differentially private release: noisy mean of clipped embeddings.

    The statistic is :func:`clipped_mean_statistic` (clipped sum / public n);
    N(0, sigma^2 I) noise is added in float64 with sigma =
    analytic_gaussian_sigma(epsilon, delta, Delta), Delta =
    clipped_mean_sensitivity(n, clip_norm, adjacency), drawn from ``noise`` (a
    :class:`dpdeepsets.noise.NoiseSource`: keyed or secure in the pipeline).  The
    result is rounded to float32 (post-processing).  (epsilon, delta)-DP w.r.t.
    one row of this set under ``adjacency``, provided clip_norm, epsilon, delta
    and n were chosen without looking at the private data and nobody but the
    data owner holds the noise source's key.

    epsilon = inf: no noise (sigma = 0), a non-private reference release;
    the ledger says private=False.  So does a noise source that is not private
    (the unit-test-only public seed).  A UserWarning is raised when delta >= 1/n,
    since such a delta permits mechanisms that publish a random row verbatim;
    the release still proceeds (the choice is the caller's and is recorded).

    Returns (noisy_mean float32 of shape (d,), ledger dict with keys n, dim,
    clip_norm, adjacency, sensitivity, epsilon, delta, sigma, mechanism,
    noise_source (+ key_fingerprint for keyed noise), private).  The ledger
    holds no seed, and not the actual row count (under add_remove that count is
    what the guarantee protects).
    """
    e = _check_epsilon(epsilon)
    d = _check_delta(delta)
    c = _check_positive_finite("clip_norm", clip_norm)
    n = _check_n(n)
    statistic = clipped_mean_statistic(embeddings, clip_norm=c, adjacency=adjacency, n=n)
    dim = statistic.shape[0]
    sens = clipped_mean_sensitivity(n, c, adjacency)
    sigma = analytic_gaussian_sigma(e, d, sens)
    private = not math.isinf(e) and bool(noise.private)
    if not math.isinf(e) and d >= 1.0 / n:
        warnings.warn(
            f"PRIVACY WARNING: delta={d!r} >= 1/n={1.0 / n!r}; this delta is too "
            "large to be meaningful for a set of this size (it allows leaking a "
            "whole row). Use delta << 1/n.",
            UserWarning,
            stacklevel=2,
        )
    out = statistic
    if sigma > 0:
        out = statistic + sigma * noise.numpy_rng("gaussian").standard_normal(dim)
    ledger = {
        "n": n,
        "dim": int(dim),
        "clip_norm": float(c),
        "adjacency": adjacency,
        "sensitivity": float(sens),
        "epsilon": float(e),
        "delta": float(d),
        "sigma": float(sigma),
        "mechanism": "analytic_gaussian" if not math.isinf(e) else "none (non-private reference, epsilon=inf)",
        **noise.ledger(),
        "private": private,
    }
    return out.astype(np.float32), ledger


# --------------------------------------------------------------------------
# DP-SGD calibration and accounting (opacus' accountants)
# --------------------------------------------------------------------------
def resolve_accountant(accountant: str, epsilon: float, sample_rate: float,
                       prv_max_epsilon: float) -> str:
    """The accountant of one DP-SGD cell: ``gdp``, ``prv`` or ``rdp``.

    ``auto``: full-batch training (sample_rate 1) is T compositions of a Gaussian
    mechanism, exactly (sqrt(T)/z)-GDP, so ``gdp`` is exact and instant; otherwise
    opacus' PRV accountant (tight) up to ``prv_max_epsilon`` and RDP (a conservative
    upper bound) above it, since PRV's cost grows with epsilon (at epsilon = 1024 it
    did not return within 60 s) while RDP's does not.  ``benchmarks/accountant_time.py``
    measures all three over the paper's grid.
    """
    if accountant == "gdp" and float(sample_rate) != 1.0:
        raise PrivacyError(f"the gdp accountant is exact for full-batch DP-SGD only "
                           f"(sample_rate 1), got sample_rate {sample_rate!r}")
    if accountant in DPSGD_ACCOUNTANTS:
        return accountant
    if accountant == "auto":
        if float(sample_rate) == 1.0:
            return "gdp"
        return "prv" if float(epsilon) <= float(prv_max_epsilon) else "rdp"
    raise PrivacyError(f"accountant must be one of {DPSGD_ACCOUNTANTS + ('auto',)}, got {accountant!r}")


def _check_rate_steps(sample_rate, steps) -> tuple[float, int]:
    q = _real("sample_rate", sample_rate)
    if not 0.0 < q <= 1.0:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PrivacyError(f"steps must be an integer >= 1, got {steps!r}")
    return q, int(steps)


@contextmanager
def _quiet_opacus():
    """opacus' accountants warn about their order grid and overflow in PRV's tails (harmless)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]ptimal order.*")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\..*")
        yield


def dpsgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps (rate q, noise multiplier z).

    Add/remove-one adjacency (what opacus certifies).  ``accountant``: ``gdp`` (exact, q = 1
    only: T Gaussian steps of sensitivity C and noise zC are (sqrt(T)/z)-GDP), or opacus'
    ``prv`` or ``rdp``.
    """
    z = _check_positive_finite("noise_multiplier", noise_multiplier)
    q, t = _check_rate_steps(sample_rate, steps)
    d = _check_delta(delta)
    resolve_accountant(accountant, 1.0, q, 0.0)  # validates the name (and gdp's q = 1)
    if accountant == "gdp":
        return gdp_epsilon(math.sqrt(t) / z, d)
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(z, q, t)]
    with _quiet_opacus():
        return float(acc.get_epsilon(delta=d))


@lru_cache(maxsize=256)
def dpsgd_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int,
                           accountant: str, tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (to ``tolerance`` in epsilon) with dpsgd_epsilon <= epsilon.

    opacus' ``get_noise_multiplier`` (bisection on the multiplier until the accounted
    epsilon lies in [epsilon - tolerance, epsilon]); the returned multiplier is then
    checked once more against the target, so the claim never rests on the bisection alone.
    Poisson sampling at rate q, ``steps`` steps, add/remove-one adjacency.  ``gdp`` (q = 1):
    exactly z = sqrt(T) * analytic_gaussian_sigma(epsilon, delta, 1), no bisection on
    an accountant.
    """
    e = _check_epsilon(epsilon, allow_inf=False)
    d = _check_delta(delta)
    q, t = _check_rate_steps(sample_rate, steps)
    resolve_accountant(accountant, e, q, 0.0)
    if accountant == "gdp":
        return math.sqrt(t) * analytic_gaussian_sigma(e, d, 1.0)
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet_opacus():
        z = float(get_noise_multiplier(target_epsilon=e, target_delta=d, sample_rate=q, steps=t,
                                       accountant=accountant, epsilon_tolerance=tolerance))
    spent = dpsgd_epsilon(z, q, t, d, accountant)
    if spent > e * (1 + 1e-9):
        raise PrivacyError(f"calibrated noise multiplier {z} gives epsilon {spent} > target {e}")
    return z


# --------------------------------------------------------------------------
# composition (Gaussian differential privacy)
# --------------------------------------------------------------------------
def gdp_mu(sensitivities_over_sigmas: Iterable[tuple[float, float]]) -> float:
    """mu of the adaptive composition of Gaussian releases about one private set.

    Each (Delta_i, sigma_i) is a Gaussian mechanism with L2 sensitivity
    Delta_i (all under the same adjacency), which is (Delta_i/sigma_i)-GDP;
    their composition is mu-GDP with mu = sqrt(sum (Delta_i/sigma_i)^2)
    (Dong, Roth & Su 2019, Cor. 3.3).  sigma_i = 0 gives mu = inf.  No pairs
    gives 0.
    """
    total = 0.0
    for pair in sensitivities_over_sigmas:
        sens_raw, sigma_raw = pair
        sens = _check_positive_finite("sensitivity", sens_raw)
        s = _check_sigma(sigma_raw)
        if s == 0:
            return math.inf
        total += (sens / s) ** 2
    return math.sqrt(total)


def _check_mu(mu) -> float:
    m = _real("mu", mu)
    if m < 0:
        raise PrivacyError(f"mu must be >= 0, got {mu!r}")
    return m


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of a mu-GDP mechanism (Dong, Roth & Su 2019, Cor. 2.13).

    delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), which is
    gaussian_delta(eps, sigma=1/mu, sensitivity=1) and is evaluated by it (log
    space).  mu = inf gives 1, mu = 0 gives 0.
    """
    m = _check_mu(mu)
    e = _check_epsilon(epsilon, allow_zero=True)
    if m == 0:
        return 0.0
    return gaussian_delta(e, 0.0 if math.isinf(m) else 1.0 / m, 1.0)


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon >= 0 with gdp_delta(mu, epsilon) <= delta.

    Bisection on epsilon (delta is decreasing in epsilon) to a relative
    bracket width of 1e-12; returns the upper end of the bracket so the
    returned epsilon satisfies the bound.  mu = inf gives inf.
    """
    m = _check_mu(mu)
    d = _check_delta(delta)
    if math.isinf(m):
        return math.inf
    if m == 0:
        return 0.0
    log_target = math.log(d)

    def ok(e: float) -> bool:
        return _log_gaussian_delta(e, m) <= log_target

    if ok(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(_MAX_ITER):
        if ok(hi):
            break
        lo, hi = hi, 2.0 * hi
    for _ in range(_MAX_ITER):
        if hi - lo <= _REL_TOL * hi:
            break
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def compose_releases(ledger_entries: list[dict], delta: float) -> dict:
    """Composed (epsilon, delta) guarantee of several releases about one set.

    Each entry needs "sensitivity" and "sigma" (as written by
    :func:`release_clipped_mean`); entries must share one adjacency (if they
    record it).  Composition is exact via GDP: mu = sqrt(sum (Delta/sigma)^2),
    epsilon = gdp_epsilon(mu, delta).  A non-private entry (sigma = 0) makes
    the composition non-private (epsilon = inf).  Returns {"n_releases",
    "mu", "epsilon", "delta"}.
    """
    d = _check_delta(delta)
    entries = list(ledger_entries)
    if not entries:
        raise PrivacyError("ledger_entries must be non-empty, got []")
    adjs = {e["adjacency"] for e in entries if "adjacency" in e}
    if len(adjs) > 1:
        raise PrivacyError(f"ledger_entries mix adjacencies {sorted(adjs)}")
    try:
        pairs = [(e["sensitivity"], e["sigma"]) for e in entries]
    except KeyError as exc:
        raise PrivacyError(f"ledger entry lacks key {exc.args[0]!r}") from None
    mu = gdp_mu(pairs)
    return {"n_releases": len(entries), "mu": float(mu), "epsilon": float(gdp_epsilon(mu, d)), "delta": d}


def compose_ledger(entries: list[dict], delta: float) -> dict:
    """Composed (epsilon, delta) guarantee of every release and DP-SGD fit of one private set.

    Each entry is a ledger row: a Gaussian release (``mechanism`` in :data:`GAUSSIAN_MECHANISMS`:
    analytic_gaussian, or pe_vote_histogram for Private Evolution's T histograms as one
    release of sensitivity sqrt(T) D; with sensitivity and sigma) or a DP-SGD fit (``mechanism`` starting with "dp-sgd", with
    noise_multiplier, sample_rate, steps).  Entries must share one adjacency.  Gaussian
    releases and full-batch DP-SGD fits only: exact Gaussian-DP composition
    (:func:`compose_releases`).  With subsampled DP-SGD fits: Renyi-DP composition of all
    of them (dp-accounting's RDP accountant; an upper bound).  A non-private entry makes the composition non-private (inf).
    Returns {"n_entries", "epsilon", "delta", "composition"}.
    """
    d = _check_delta(delta)
    entries = list(entries)
    if not entries:
        raise PrivacyError("entries must be non-empty, got []")
    adjs = {e["adjacency"] for e in entries}
    if len(adjs) > 1:
        raise PrivacyError(f"entries mix adjacencies {sorted(adjs)}: an epsilon must mean "
                           "the same thing for every release it composes")
    if not all(bool(e.get("private")) for e in entries):
        return {"n_entries": len(entries), "epsilon": math.inf, "delta": d,
                "composition": "non-private entry"}
    gaussian = [e for e in entries if e["mechanism"] in GAUSSIAN_MECHANISMS]
    sgd = [e for e in entries if str(e["mechanism"]).startswith("dp-sgd")]
    if len(gaussian) + len(sgd) != len(entries):
        unknown = sorted({str(e["mechanism"]) for e in entries} - set(GAUSSIAN_MECHANISMS))
        raise PrivacyError(f"cannot compose mechanisms {unknown}")
    # Full-batch DP-SGD (q = 1) is T Gaussian steps: (sqrt(T)/z)-GDP, one Gaussian release of
    # sensitivity 1 and sigma z/sqrt(T).
    full_batch = [e for e in sgd if float(e["sample_rate"]) == 1.0]
    sgd = [e for e in sgd if float(e["sample_rate"]) != 1.0]
    gaussian = gaussian + [{"sensitivity": 1.0, "sigma": float(e["noise_multiplier"]) / math.sqrt(int(e["steps"]))}
                           for e in full_batch]
    if not sgd:
        c = compose_releases(gaussian, d)
        return {"n_entries": len(entries), "epsilon": c["epsilon"], "delta": d,
                "composition": "gaussian DP (exact)"}
    import dp_accounting as dpa
    from dp_accounting.rdp import RdpAccountant

    relation = {"add_remove": dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
                "replace_one": dpa.NeighboringRelation.REPLACE_ONE}[adjs.pop()]
    acc = RdpAccountant(neighboring_relation=relation)
    for e in gaussian:
        acc.compose(dpa.GaussianDpEvent(float(e["sigma"]) / float(e["sensitivity"])))
    for e in sgd:
        step = dpa.PoissonSampledDpEvent(float(e["sample_rate"]),
                                         dpa.GaussianDpEvent(float(e["noise_multiplier"])))
        acc.compose(dpa.SelfComposedDpEvent(step, int(e["steps"])))
    return {"n_entries": len(entries), "epsilon": float(acc.get_epsilon(d)), "delta": d,
            "composition": "renyi DP (dp-accounting RDP accountant, upper bound)"}


# --------------------------------------------------------------------------
# Private Evolution: T noisy vote histograms
# --------------------------------------------------------------------------
# L2 sensitivity of one vote histogram (each example casts exactly one vote).
PE_HISTOGRAM_SENSITIVITY = {"add_remove": 1.0, "replace_one": _SQRT2}


def pe_histogram_sigma(epsilon: float, delta: float, iterations: int, adjacency: str) -> float:
    """Per-iteration noise std of Private Evolution's vote histograms for (epsilon, delta)-DP.

    Each of the T iterations releases h_t + N(0, sigma^2 I), h_t the histogram of votes of
    the private examples for their nearest candidate
    (:func:`dpdeepsets.private_evolution.vote_histogram`).  Every example casts exactly one
    vote, so for fixed candidates h_t has L2 sensitivity Delta = 1 under add_remove (one
    vote appears or disappears) and sqrt(2) under replace_one (one vote moves between two
    bins) (:data:`PE_HISTOGRAM_SENSITIVITY`).  The candidates of iteration t depend on the
    private data only through the earlier noisy histograms, so the T releases compose
    adaptively as Gaussian DP: mu = sqrt(T) Delta / sigma (Dong, Roth & Su 2019, Cor. 3.3),
    exactly the mu of ONE Gaussian release of sensitivity sqrt(T) Delta and std sigma.  Hence
    sigma = analytic_gaussian_sigma(epsilon, delta, sqrt(T) Delta), exact (no slack).

    Assumes the embedder and everything but the votes (base model, population size,
    threshold, lookahead, strength schedule, T) are public and chosen without the private
    data, and that the noise is fresh per iteration.  A ledger entry
    {"mechanism": "analytic_gaussian", "sensitivity": sqrt(T) Delta, "sigma": sigma} composes
    with :func:`compose_ledger` as the whole run.  epsilon = inf returns 0.0 (a non-private
    reference).  Raises PrivacyError for epsilon <= 0, delta not in (0, 1), iterations not an
    integer >= 1, or an unknown adjacency.
    """
    e = _check_epsilon(epsilon)
    d = _check_delta(delta)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise PrivacyError(f"iterations must be an integer >= 1, got {iterations!r}")
    if adjacency not in PE_HISTOGRAM_SENSITIVITY:
        raise PrivacyError(f"adjacency must be one of {ADJACENCIES}, got {adjacency!r}")
    return analytic_gaussian_sigma(e, d, math.sqrt(int(iterations)) * PE_HISTOGRAM_SENSITIVITY[adjacency])
