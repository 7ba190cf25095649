"""Privacy assurance beyond the arithmetic: an empirical audit and a data-flow check.

Empirical audit (:func:`audit_release`)
---------------------------------------
Runs the release mechanism of :func:`dpdeepsets.privacy.release_clipped_mean` many times on
a worst-case pair of neighbouring datasets D, D', applies a threshold test to tell them apart
and turns its error rates into a statistical *lower bound* on epsilon (standard DP auditing:
Jagielski, Ullman & Oprea 2020; Nasr et al. 2021).  If the implementation is (epsilon,
delta)-DP, every test satisfies FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta,
so with Clopper-Pearson *upper* bounds FPR_ub, FNR_ub (joint confidence >= 1 - alpha)

    eps_lb = max(log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub))

is below the true epsilon with probability >= 1 - alpha.  An eps_lb above the claimed epsilon
is therefore evidence that the claim is false (a bug in calibration, sensitivity or noise).

Nothing is re-derived here: sigma and the sensitivity come from the ledger of real
:func:`~dpdeepsets.privacy.release_clipped_mean` calls on the two concrete datasets, and the
clean means from :func:`~dpdeepsets.privacy.clip_rows`.  The bulk of the trials is then
sampled vectorised (see :func:`audit_release` for why that is exact), and
:func:`check_release_noise` checks separately that the real release really adds noise of the
ledger's sigma.

Limits, by construction: with N evaluation trials no threshold test can certify more than
about log(N / ln(2/alpha)) (the false-positive rate cannot be bounded below ~ln(2/alpha)/N);
:func:`max_certifiable_epsilon` gives the exact ceiling (about 10.2 for N = 1e5).  Even well
below the ceiling the bound is loose, because FPR and FNR must both be estimated: with 1e5
evaluation trials a correctly calibrated mechanism audits to roughly 0.1 / 0.55 / 2.5 / 7.3
at claimed epsilon 0.25 / 1 / 4 / 16 (n = 128, C = 1, delta = 1e-5).  So the audit is a *falsification* test: it can catch a mechanism
that is noticeably less private than claimed (e.g. sigma halved at epsilon <= 4), it can
never prove the claim, and above epsilon ~ 8 it has almost no power at all.

Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import beta, chi2, norm

from dpdeepsets import noise as N
from dpdeepsets import privacy as P

__all__ = [
    "AuditError",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "max_certifiable_epsilon",
    "worst_case_pair",
    "audit_release",
    "check_release_noise",
]


class AuditError(AssertionError):
    """The code under audit contradicts itself (e.g. the ledger sigma is not the calibration)."""


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------
def clopper_pearson_upper(k, n: int, alpha: float):
    """One-sided Clopper-Pearson upper confidence bound on a binomial rate.

    For k successes out of n trials, the returned p_ub satisfies P[p <= p_ub] >= 1 - alpha
    (exact, conservative): the (1 - alpha) quantile of Beta(k + 1, n - k), and 1 when k = n.
    ``k`` may be an array (vectorised).
    """
    k = np.asarray(k, dtype=np.float64)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n < 1 or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    out = np.ones_like(k)
    lt = k < n
    out[lt] = beta.ppf(1.0 - alpha, k[lt] + 1.0, n - k[lt])
    return out if out.ndim else float(out)


def epsilon_lower_bound(fpr_ub, fnr_ub, delta: float):
    """max(0, log((1-delta-FNR_ub)/FPR_ub), log((1-delta-FPR_ub)/FNR_ub)), vectorised.

    The largest epsilon that the two error-rate upper bounds of one test prove to be
    violated (a term whose numerator is <= 0 proves nothing and counts as 0).
    """
    fpr_ub = np.asarray(fpr_ub, dtype=np.float64)
    fnr_ub = np.asarray(fnr_ub, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1.0 - delta - fnr_ub, 0.0, None)) - np.log(fpr_ub)
        b = np.log(np.clip(1.0 - delta - fpr_ub, 0.0, None)) - np.log(fnr_ub)
    out = np.maximum(0.0, np.maximum(np.nan_to_num(a, nan=0.0, neginf=0.0), np.nan_to_num(b, nan=0.0, neginf=0.0)))
    return out if out.ndim else float(out)


def max_certifiable_epsilon(eval_trials: int, delta: float, alpha: float = 0.05) -> float:
    """The largest eps_lb any threshold test can give with ``eval_trials`` trials per dataset.

    Reached by a test with zero false positives and zero false negatives: both rates are then
    bounded by 1 - (alpha/2)^(1/N), so eps_lb = log((1 - delta - ub) / ub) ~ log(N / ln(2/alpha)).
    A claimed epsilon above this can neither be confirmed nor refuted by this audit.
    """
    ub = clopper_pearson_upper(0, int(eval_trials), alpha / 2.0)
    return float(epsilon_lower_bound(ub, ub, delta))


# --------------------------------------------------------------------------
# the worst case
# --------------------------------------------------------------------------
def worst_case_pair(n: int, dim: int, clip_norm: float, adjacency: str, seed: int):
    """Two neighbouring datasets (n rows of dimension dim) at the sensitivity, and the direction.

    Returns (D, D_prime, u) with u a random unit vector.  n - 1 rows are shared (random
    directions, norms up to 2C so that clipping is exercised).  The differing row is 3C u in D
    (clipped to C u) and, for ``replace_one``, -3C u in D' (clipped to -C u): the clipped means
    differ by exactly 2C/n along u.  For ``add_remove`` the row is *absent* from D'; since the
    mean is sum/n with n public, that is the zero row in D', and the means differ by C/n along u.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim!r}")
    c = float(clip_norm)
    rng = np.random.default_rng([int(seed), 0xA0D17])
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    shared = rng.standard_normal((n - 1, dim))
    shared *= (2.0 * c * rng.random(n - 1) / np.linalg.norm(shared, axis=1))[:, None]
    row = 3.0 * c * u
    if adjacency == "replace_one":
        other = -row
    elif adjacency == "add_remove":
        other = np.zeros(dim)
    else:
        raise P.PrivacyError(f"adjacency must be one of {P.ADJACENCIES}, got {adjacency!r}")
    d = np.vstack([row[None, :], shared])
    d_prime = np.vstack([other[None, :], shared])
    return d, d_prime, u


def _check_trials(trials) -> int:
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 4:
        raise ValueError(f"trials must be an integer >= 4, got {trials!r}")
    return int(trials)


# --------------------------------------------------------------------------
# the audit
# --------------------------------------------------------------------------
def audit_release(
    epsilon: float,
    delta: float,
    n: int,
    clip_norm: float,
    adjacency: str,
    trials: int,
    seed: int,
    sigma_scale: float = 1.0,
    alpha: float = 0.05,
    *,
    dim: int = 32,
    select_fraction: float = 0.5,
) -> dict:
    """Empirical lower bound on the epsilon of the clipped-mean release (see module docstring).

    1. Worst case: :func:`worst_case_pair` builds D, D' whose clipped means differ by exactly
       the sensitivity along a unit vector u.  ``release_clipped_mean`` is called on both
       (seeded noise); its ledger gives sigma and the sensitivity, which must agree with
       ``analytic_gaussian_sigma(epsilon, delta, clipped_mean_sensitivity(n, C, adjacency))``
       and with the actual gap between the clipped means (else :class:`AuditError`).
    2. ``trials`` runs of the mechanism on each of D and D' with noise sigma * sigma_scale
       (sigma_scale = 0.5 simulates a mechanism whose sigma is halved: mis-calibrated).  The
       runs are sampled vectorised as the statistic s = <output, u> = <mean, u> + sigma Z:
       for isotropic Gaussian noise this projection is exactly N(<mean, u>, sigma^2), and since
       the two means differ only along u the orthogonal part of the output is identically
       distributed under D and D' and independent of s.  s is therefore a sufficient
       statistic, and by Neyman-Pearson the threshold tests "guess D iff s > t" are the
       optimal tests.  (That the real release adds noise of this sigma is checked by
       :func:`check_release_noise`.)
    3. The first ``select_fraction`` of the runs choose the threshold t among 511 candidates
       (quantiles of the pooled selection runs, dense in both tails): the one with the largest
       eps_lb on the selection runs, scored at the Bonferroni level alpha/(2 * 511) so that
       noisy extreme-tail candidates do not win by luck.  The remaining runs, untouched by the
       choice, give FPR = P[s > t | D'], FNR = P[s <= t | D], their Clopper-Pearson upper
       bounds at level 1 - alpha/2 each (joint level >= 1 - alpha) and eps_lb.

    With ~1e5 evaluation trials the bound cannot exceed ~10 (``epsilon_ceiling``) and is far
    below the claim for a correct mechanism (see module docstring): the audit refutes a claim
    (eps_lb > epsilon_claimed, ``caught``), it never proves one.

    Returns a dict with epsilon_claimed, epsilon_lower_bound, sigma (the audited sigma, i.e.
    ledger sigma * sigma_scale), sigma_ledger, sigma_scale, sensitivity, mean_gap, delta,
    adjacency, n, trials, eval_trials, threshold, fpr, fnr (empirical, evaluation split),
    fpr_ub, fnr_ub, alpha, epsilon_ceiling, caught.
    """
    e = float(epsilon)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"epsilon must be positive and finite to be audited, got {epsilon!r} "
                         "(epsilon = inf is a non-private reference release)")
    trials = _check_trials(trials)
    s_scale = float(sigma_scale)
    if not (s_scale > 0 and math.isfinite(s_scale)):
        raise ValueError(f"sigma_scale must be positive and finite, got {sigma_scale!r}")
    if not (0.0 < select_fraction < 1.0):
        raise ValueError(f"select_fraction must be in (0, 1), got {select_fraction!r}")

    d_set, d_prime, u = worst_case_pair(n, dim, clip_norm, adjacency, seed)
    kw = dict(epsilon=e, delta=delta, clip_norm=clip_norm, adjacency=adjacency, n=n)
    _, led = P.release_clipped_mean(d_set, noise=N.PublicSeedNoise(int(seed)), **kw)
    _, led_p = P.release_clipped_mean(d_prime, noise=N.PublicSeedNoise(int(seed) + 1), **kw)
    sigma_ledger, sens = led["sigma"], led["sensitivity"]
    if (led_p["sigma"], led_p["sensitivity"]) != (sigma_ledger, sens):
        raise AuditError(f"neighbouring datasets got different calibrations: {led} vs {led_p}")
    expected = P.analytic_gaussian_sigma(e, delta, P.clipped_mean_sensitivity(n, clip_norm, adjacency))
    if sigma_ledger != expected:
        raise AuditError(f"ledger sigma {sigma_ledger!r} != analytic calibration {expected!r}")
    mean_d = P.clip_rows(d_set, clip_norm).mean(axis=0)
    mean_p = P.clip_rows(d_prime, clip_norm).mean(axis=0)
    m_d, m_p = float(mean_d @ u), float(mean_p @ u)
    gap_vec = mean_d - mean_p
    mean_gap = float(np.linalg.norm(gap_vec))
    if mean_gap > sens * (1 + 1e-9):
        raise AuditError(f"clipped means differ by {mean_gap!r} > ledger sensitivity {sens!r}")
    if np.linalg.norm(gap_vec - (m_d - m_p) * u) > 1e-9 * max(sens, 1e-300):
        raise AuditError("the clipped means do not differ along u only")

    sigma = sigma_ledger * s_scale
    rng = np.random.default_rng([int(seed), 0x5A3D])
    stat_d = m_d + sigma * rng.standard_normal(trials)  # s = <M(D), u>
    stat_p = m_p + sigma * rng.standard_normal(trials)  # s = <M(D'), u>

    k = max(2, min(trials - 2, round(trials * select_fraction)))
    a_each = alpha / 2.0
    sel_d, sel_p = np.sort(stat_d[:k]), np.sort(stat_p[:k])
    probs = np.geomspace(1.0 / k, 0.5, 256)
    probs = np.unique(np.concatenate([probs, 1.0 - probs]))
    cand = np.quantile(np.concatenate([sel_d, sel_p]), probs)
    fp_sel = k - np.searchsorted(sel_p, cand, side="right")  # #{s > t | D'}
    fn_sel = np.searchsorted(sel_d, cand, side="right")  # #{s <= t | D}
    # Scored with a Bonferroni-corrected level: without it the noisiest extreme-tail
    # candidates win the selection by luck and do badly on the evaluation split.
    a_sel = a_each / len(cand)
    score = epsilon_lower_bound(clopper_pearson_upper(fp_sel, k, a_sel),
                                clopper_pearson_upper(fn_sel, k, a_sel), delta)
    t = float(cand[int(np.argmax(score))])

    ev_d, ev_p = stat_d[k:], stat_p[k:]
    n_ev = trials - k
    fp = int(np.count_nonzero(ev_p > t))
    fn = int(np.count_nonzero(ev_d <= t))
    fpr_ub = clopper_pearson_upper(fp, n_ev, a_each)
    fnr_ub = clopper_pearson_upper(fn, n_ev, a_each)
    eps_lb = float(epsilon_lower_bound(fpr_ub, fnr_ub, delta))
    return {
        "epsilon_claimed": e,
        "epsilon_lower_bound": eps_lb,
        "sigma": float(sigma),
        "sigma_ledger": float(sigma_ledger),
        "sigma_scale": s_scale,
        "sensitivity": float(sens),
        "mean_gap": mean_gap,
        "delta": float(delta),
        "adjacency": adjacency,
        "n": int(n),
        "trials": trials,
        "eval_trials": n_ev,
        "threshold": t,
        "fpr": fp / n_ev,
        "fnr": fn / n_ev,
        "fpr_ub": float(fpr_ub),
        "fnr_ub": float(fnr_ub),
        "alpha": float(alpha),
        "epsilon_ceiling": max_certifiable_epsilon(n_ev, delta, alpha),
        "caught": eps_lb > e,
    }


def check_release_noise(
    epsilon: float,
    delta: float,
    n: int,
    clip_norm: float,
    adjacency: str,
    releases: int,
    seed: int,
    *,
    dim: int = 32,
    alpha: float = 1e-3,
    release: Callable = P.release_clipped_mean,
) -> dict:
    """Does the real release add N(0, sigma^2 I) noise with the sigma its ledger claims?

    Calls ``release`` (default :func:`~dpdeepsets.privacy.release_clipped_mean`, seeded noise,
    seeds seed .. seed + releases - 1) on the worst-case dataset D of :func:`worst_case_pair`
    and takes the residuals r = output - clipped mean (releases x dim numbers).  Under the
    claim sum(r^2)/sigma^2 ~ chi^2(releases * dim) and mean(r) ~ N(0, sigma^2/(releases dim));
    both are tested two-sided at level alpha/2 each.  A release that adds less noise than its
    ledger says (e.g. half) fails the chi-square test by a wide margin.  The float32 rounding
    of the output is ~1e-8 relative, negligible against sigma here.

    Returns dict(sigma_ledger, sigma_empirical, chi2_stat, chi2_low, chi2_high, mean_z, ok).
    """
    if not math.isfinite(float(epsilon)):
        raise ValueError("epsilon = inf has no noise to check")
    releases = _check_trials(releases)
    d_set, _, _ = worst_case_pair(n, dim, clip_norm, adjacency, seed)
    clean = P.clip_rows(d_set, clip_norm).mean(axis=0)
    outs, sigmas = [], set()
    for i in range(releases):
        out, led = release(d_set, epsilon=epsilon, delta=delta, clip_norm=clip_norm,
                           adjacency=adjacency, n=n, noise=N.PublicSeedNoise(int(seed) + i))
        outs.append(np.asarray(out, dtype=np.float64))
        sigmas.add(led["sigma"])
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
            "chi2_stat": stat, "chi2_low": float(lo), "chi2_high": float(hi), "mean_z": z, "ok": ok}
