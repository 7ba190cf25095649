"""Black-box audit of THE release, :func:`dpdeepsets.privacy.release_clipped_mean`.

The audit calls the release function itself (or any ``release=`` callable with its
signature, so a planted bug is audited the same way), once per trial, with a fresh noise
source per trial (:class:`~dpdeepsets.noise.KeyedNoise` with a test key and a per-trial cell
identity), on worst-case neighbouring datasets (:func:`worst_case_neighbours`):

``replace`` (replace_one)  D: n rows, one far row +3C u;  D': the same with -3C u instead.
``remove``  (add_remove)   D: n rows incl. a far row +3C u;  D': D without it (n - 1 rows).
``add``     (add_remove)   D: n rows;  D': D plus a far row +3C u (n + 1 rows).

The shared rows all point along -u with norm above C (clipped to -C u): for the release as
specified this changes nothing (the clipped means differ by exactly the sensitivity along
u whatever the shared rows), but it is what a release that divides by the actual row count
gets most wrong (its means then differ by ~2C/n instead of C/n).  The statistic is the
projection of the output onto u; the threshold test and its Clopper-Pearson bounds are
:func:`~dpdeepsets.privacy_audit.stats.threshold_audit` (the threshold is chosen on the
first 10% of the trials, by a Gaussian fit, and evaluated on the other 90%).  Nothing of the release is re-derived or trusted:
not its sigma, not its sensitivity, not its ledger.

Honest limits.  With N evaluation trials no threshold test can certify more than about
log(N / ln(2/alpha)) (``epsilon_ceiling``: 7.1 for N = 4,500, 8.5 for N = 18,000, 10.2 for
N = 1e5), so claims of epsilon 16 or 64 can never be refuted here.  Below the ceiling the
bound is loose, since both error rates must be estimated.  Measured with 20,000 trials per
neighbour (``benchmarks/results/privacy_audit.log``): the correct release audits to
0.0-0.06 / 0.36-0.56 / 1.6-2.3 at epsilon 0.25 / 1 / 4; sigma halved and the row-count mean
(both double Gaussian-DP mu on these neighbours) to 0.07-0.23 / 1.03-1.24 / 4.1-4.6, i.e.
caught at 1 and 4 (margins 0.03-0.6) and not at 0.25 (that needs > 1e5 trials).  The margins
are thin: the audit is a falsification test that catches a release clearly less private
than it claims; it never proves a claim.
Cost: one release call per trial (~3,000 calls per second on this machine).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

import numpy as np
from scipy.stats import chi2, norm

from dpdeepsets import noise as N
from dpdeepsets import privacy as P

from .stats import threshold_audit

__all__ = [
    "AuditError",
    "AUDIT_KEY",
    "NEIGHBOURS",
    "NEIGHBOUR_ADJACENCY",
    "worst_case_neighbours",
    "audit_release",
    "release_sigma_halved",
    "release_row_count_mean",
    "PLANTED_RELEASE_BUGS",
    "check_release_noise",
]

# A fixed, PUBLIC key: audit runs are reproducible, and none of their outputs is ever released.
AUDIT_KEY = hashlib.sha256(b"dpdeepsets/privacy-audit/public-test-key").digest()
NEIGHBOURS = ("replace", "remove", "add")
NEIGHBOUR_ADJACENCY = {"replace": "replace_one", "remove": "add_remove", "add": "add_remove"}
_FAR = 3.0  # the far row has norm 3C (clipped to C): clipping is exercised


class AuditError(AssertionError):
    """The code under audit contradicts itself (e.g. two releases of one claim disagree)."""


def worst_case_neighbours(neighbours: str, n: int, dim: int, clip_norm: float, seed: int = 0):
    """Neighbouring datasets (D, D') and the unit vector u along which their outputs differ.

    D holds the far row +3C u, D' does not; so the correct release projects onto u by C/n
    (add_remove) or 2C/n (replace_one) more under D, and a test guesses D iff <output, u> > t.
    Row counts: ``replace`` (n, n), D' has -3C u instead; ``remove`` (n, n - 1); ``add``
    (n + 1, n), i.e. D' has n rows and D is D' plus the far row.  Shared rows: -c_i u with
    c_i in [1.5C, 3C), clipped to -C u (see the module docstring).  u is a seeded random unit
    vector (public: the auditor builds the datasets).
    """
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
    if dim < 1 or n < 2:
        raise ValueError(f"need dim >= 1 and n >= 2, got dim={dim!r}, n={n!r}")
    c = float(clip_norm)
    rng = np.random.default_rng([int(seed), 0xA0D17])
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    far = (_FAR * c * u)[None, :]
    shared = -(c * (1.5 + 1.5 * rng.random(n)))[:, None] * u[None, :]  # n rows; use what is needed
    if neighbours == "replace":
        return np.vstack([far, shared[:n - 1]]), np.vstack([-far, shared[:n - 1]]), u
    if neighbours == "remove":
        return np.vstack([far, shared[:n - 1]]), shared[:n - 1].copy(), u
    return np.vstack([far, shared]), shared.copy(), u  # add: D' (n + 1 rows) has the larger mean


def _trial_noise(key: bytes, **cell) -> N.KeyedNoise:
    return N.KeyedNoise(key, N.cell_identity(audit="release", **cell))


def audit_release(
    epsilon: float,
    delta: float,
    n: int,
    clip_norm: float,
    neighbours: str,
    trials: int,
    *,
    release: Callable = P.release_clipped_mean,
    key: bytes = AUDIT_KEY,
    seed: int = 0,
    dim: int = 32,
    alpha: float = 0.05,
    select_fraction: float = 0.1,
    rule: str = "gaussian",
) -> dict:
    """Empirical lower bound on the epsilon of ``release`` from ``trials`` calls on each neighbour.

    ``release(x, epsilon=, delta=, clip_norm=, adjacency=, n=, noise=)`` is called with the
    adjacency of ``neighbours`` (:data:`NEIGHBOUR_ADJACENCY`) and public n, on the two
    datasets of :func:`worst_case_neighbours`, each call with its own keyed noise source
    (``key``, cell identity: epsilon, neighbours, dataset, seed, trial).  Statistic: the
    output projected onto u; bound: :func:`~dpdeepsets.privacy_audit.stats.threshold_audit`.
    ``caught``: the bound exceeds the claimed epsilon, i.e. the release is refuted at level
    alpha.  See the module docstring for what the bound can and cannot show.

    Returns dict(epsilon_claimed, epsilon_lower_bound, epsilon_ceiling, caught, neighbours,
    adjacency, n, rows (the two datasets' row counts), dim, trials, eval_trials, threshold,
    fpr, fnr, fpr_ub, fnr_ub, alpha, delta, sigma_ledger (what the first call's ledger says;
    informative only), release (its name), seconds, calls_per_second).
    """
    e = float(epsilon)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"epsilon must be positive and finite to be audited, got {epsilon!r} "
                         "(epsilon = inf is a non-private reference release)")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 4:
        raise ValueError(f"trials must be an integer >= 4, got {trials!r}")
    adjacency = NEIGHBOUR_ADJACENCY.get(neighbours)
    d_set, d_prime, u = worst_case_neighbours(neighbours, n, dim, clip_norm, seed)
    kw = dict(epsilon=e, delta=delta, clip_norm=clip_norm, adjacency=adjacency, n=n)
    t0 = time.perf_counter()
    stats, ledgers = {}, {}
    for name, data in (("D", d_set), ("D'", d_prime)):
        s = np.empty(trials)
        for i in range(trials):
            out, led = release(data, noise=_trial_noise(key, epsilon=e, neighbours=neighbours,
                                                        dataset=name, seed=int(seed), trial=i), **kw)
            s[i] = np.asarray(out, dtype=np.float64) @ u
            if i == 0:
                ledgers[name] = led
        stats[name] = s
    seconds = time.perf_counter() - t0
    sig = {ledgers[k].get("sigma") for k in ledgers}
    if len(sig) != 1:
        raise AuditError(f"neighbouring datasets got different ledger sigmas: {sorted(sig)}")
    r = threshold_audit(stats["D"], stats["D'"], delta, alpha, select_fraction, rule)
    return {
        "epsilon_claimed": e,
        **r,
        "caught": r["epsilon_lower_bound"] > e,
        "neighbours": neighbours,
        "adjacency": adjacency,
        "n": int(n),
        "rows": (len(d_set), len(d_prime)),
        "dim": int(dim),
        "trials": int(trials),
        "alpha": float(alpha),
        "delta": float(delta),
        "sigma_ledger": float(sig.pop()),
        "release": getattr(release, "__name__", repr(release)),
        "seconds": seconds,
        "calls_per_second": 2 * trials / seconds,
    }


# --------------------------------------------------------------------------
# planted bugs: what the audit must catch
# --------------------------------------------------------------------------
def _buggy_release(x, *, epsilon, delta, clip_norm, adjacency, n, noise, sigma_factor=1.0,
                   divide_by_rows=False):
    """The release with one bug; its ledger says what the correct release's would."""
    clipped = P.clip_rows(x, clip_norm)
    statistic = clipped.mean(axis=0) if divide_by_rows else clipped.sum(axis=0) / n
    sens = P.clipped_mean_sensitivity(n, clip_norm, adjacency)
    sigma = P.analytic_gaussian_sigma(float(epsilon), float(delta), sens)
    out = statistic + sigma_factor * sigma * noise.numpy_rng("gaussian").standard_normal(len(statistic))
    ledger = {"n": n, "dim": len(statistic), "clip_norm": float(clip_norm), "adjacency": adjacency,
              "sensitivity": sens, "epsilon": float(epsilon), "delta": float(delta), "sigma": sigma,
              "mechanism": "analytic_gaussian", **noise.ledger(), "private": bool(noise.private)}
    return out.astype(np.float32), ledger


def release_sigma_halved(x, **kw):
    """PLANTED BUG: calibrates as the real release does, then adds noise of half that sigma."""
    return _buggy_release(x, sigma_factor=0.5, **kw)


def release_row_count_mean(x, **kw):
    """PLANTED BUG (the old add/remove bug): divides the clipped sum by the actual row count.

    It claims sensitivity C/n under add_remove; removing a row from a set whose other rows
    all point the other way moves its mean by up to 2C/n.  Under replace_one (exactly n rows)
    it is the correct release.
    """
    return _buggy_release(x, divide_by_rows=True, **kw)


PLANTED_RELEASE_BUGS = {"sigma halved": release_sigma_halved,
                        "mean over the actual row count": release_row_count_mean}


# --------------------------------------------------------------------------
# the noise itself
# --------------------------------------------------------------------------
def check_release_noise(
    epsilon: float,
    delta: float,
    n: int,
    clip_norm: float,
    adjacency: str,
    releases: int,
    *,
    noise: str = "keyed",
    key: bytes = AUDIT_KEY,
    seed: int = 0,
    dim: int = 32,
    alpha: float = 1e-3,
    release: Callable = P.release_clipped_mean,
) -> dict:
    """Does the release add N(0, sigma^2 I) noise with the sigma its ledger claims?

    Calls ``release`` ``releases`` times on the dataset D of :func:`worst_case_neighbours`
    with the pipeline's own non-public noise sources: ``noise="keyed"``
    (:class:`~dpdeepsets.noise.KeyedNoise`, ``key`` and a per-release cell identity) or
    ``"secure"`` (:class:`~dpdeepsets.noise.SecureNoise`, fresh OS entropy), and takes the
    residuals r = output - clipped sum / n (releases x dim numbers).  Under the claim
    sum(r^2)/sigma^2 ~ chi^2(releases * dim) and mean(r) ~ N(0, sigma^2/(releases dim)); both
    are tested two-sided at level alpha/2 each.  A release that adds less noise than its
    ledger says (e.g. half) fails the chi-square test by a wide margin.  The float32 rounding
    of the output is ~1e-8 relative, negligible against sigma here.

    Returns dict(sigma_ledger, sigma_empirical, chi2_stat, chi2_low, chi2_high, mean_z, ok,
    noise, private (every ledger said private)).
    """
    if not math.isfinite(float(epsilon)):
        raise ValueError("epsilon = inf has no noise to check")
    if noise not in ("keyed", "secure"):
        raise ValueError(f"noise must be 'keyed' or 'secure', got {noise!r}")
    if isinstance(releases, bool) or not isinstance(releases, (int, np.integer)) or releases < 4:
        raise ValueError(f"releases must be an integer >= 4, got {releases!r}")
    neighbours = "replace" if adjacency == "replace_one" else "remove"
    d_set, _, _ = worst_case_neighbours(neighbours, n, dim, clip_norm, seed)
    clean = P.clip_rows(d_set, clip_norm).sum(axis=0) / n
    outs, sigmas, private = [], set(), True
    for i in range(releases):
        src = (N.SecureNoise() if noise == "secure" else
               N.KeyedNoise(key, N.cell_identity(audit="noise-check", epsilon=float(epsilon),
                                                 adjacency=adjacency, seed=int(seed), release=i)))
        out, led = release(d_set, epsilon=epsilon, delta=delta, clip_norm=clip_norm,
                           adjacency=adjacency, n=n, noise=src)
        outs.append(np.asarray(out, dtype=np.float64))
        sigmas.add(led["sigma"])
        private &= bool(led.get("private"))
    if len(sigmas) != 1:
        raise AuditError(f"one dataset got several ledger sigmas: {sorted(sigmas)}")
    sigma = sigmas.pop()
    r = np.stack(outs) - clean
    df = r.size
    stat = float(np.sum(r * r) / sigma**2)
    lo, hi = chi2.ppf(alpha / 4, df), chi2.ppf(1 - alpha / 4, df)
    z = float(r.mean() * math.sqrt(df) / sigma)
    ok = bool(lo <= stat <= hi and abs(z) <= norm.isf(alpha / 4))
    return {"sigma_ledger": float(sigma), "sigma_empirical": float(np.sqrt(np.mean(r * r))),
            "chi2_stat": stat, "chi2_low": float(lo), "chi2_high": float(hi), "mean_z": z,
            "ok": ok, "noise": noise, "private": private}
