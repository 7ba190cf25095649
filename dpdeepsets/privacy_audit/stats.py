"""The statistics of an empirical privacy audit: from counts of a test's errors to a lower bound on epsilon.

Two kinds of evidence, two bounds, each valid for *any* (epsilon, delta)-DP mechanism:

Threshold test on repeated runs (Kairouz et al. 2015; Jagielski, Ullman & Oprea 2020)
    Runs of the mechanism on neighbours D, D' and a test "guess D iff s > t".  DP implies
    FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta, so Clopper-Pearson *upper*
    bounds on both error rates give :func:`epsilon_lower_bound`.  :func:`threshold_audit`
    chooses t on one part of the runs and counts errors on the rest.
One run with m canaries (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1)
training run", Thm. 3.1 and their Algorithm in App. D)
    Each of m canaries is included independently with probability 1/2; the auditor guesses
    membership for r of them (abstaining on the rest) and gets v right.  For an (eps, delta)-DP
    algorithm P[v correct] is bounded by a Binomial(r, e^eps / (1 + e^eps)) tail plus a delta
    term (:func:`one_run_p_value`); :func:`one_run_epsilon_lower_bound` inverts it.

Both bounds hold with probability >= 1 - alpha over the mechanism's randomness and are
falsification tests: a bound above the claimed epsilon refutes the claim; a bound below it
proves nothing.  Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import beta, binom, norm

__all__ = [
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "max_certifiable_epsilon",
    "THRESHOLD_RULES",
    "threshold_audit",
    "one_run_p_value",
    "one_run_epsilon_lower_bound",
    "one_run_max_certifiable_epsilon",
    "guess_counts",
    "one_run_audit",
]


# --------------------------------------------------------------------------
# threshold tests on repeated runs
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
    out = np.maximum(0.0, np.maximum(np.nan_to_num(a, nan=0.0, neginf=0.0),
                                     np.nan_to_num(b, nan=0.0, neginf=0.0)))
    return out if out.ndim else float(out)


def max_certifiable_epsilon(eval_trials: int, delta: float, alpha: float = 0.05) -> float:
    """The largest eps_lb any threshold test can give with ``eval_trials`` trials per dataset.

    Reached by a test with zero false positives and zero false negatives: both rates are then
    bounded by 1 - (alpha/2)^(1/N), so eps_lb = log((1 - delta - ub) / ub) ~ log(N / ln(2/alpha)).
    A claimed epsilon above this can neither be confirmed nor refuted by this audit.
    """
    ub = clopper_pearson_upper(0, int(eval_trials), alpha / 2.0)
    return float(epsilon_lower_bound(ub, ub, delta))


def _empirical_threshold(sel_d, sel_p, delta, alpha_each, candidates):
    """The candidate (a quantile of the pooled runs) with the best bound on the selection runs,
    scored at the Bonferroni level alpha_each / #candidates so that noisy extreme-tail
    candidates do not win by luck."""
    k = len(sel_d)
    sel_d, sel_p = np.sort(sel_d), np.sort(sel_p)
    probs = np.geomspace(1.0 / k, 0.5, candidates)
    probs = np.unique(np.concatenate([probs, 1.0 - probs]))
    cand = np.quantile(np.concatenate([sel_d, sel_p]), probs)
    fp = k - np.searchsorted(sel_p, cand, side="right")  # #{s > t | D'}
    fn = np.searchsorted(sel_d, cand, side="right")  # #{s <= t | D}
    level = alpha_each / len(cand)
    score = epsilon_lower_bound(clopper_pearson_upper(fp, k, level),
                                clopper_pearson_upper(fn, k, level), delta)
    return float(cand[int(np.argmax(score))])


def _gaussian_threshold(sel_d, sel_p, n_eval, delta, alpha_each):
    """The threshold that maximises the *expected* evaluation bound when D and D' are fitted
    by Gaussians (means and standard deviations of the selection runs).  The fit only
    chooses t; a poor fit costs power, never validity."""
    m1, s1 = float(np.mean(sel_d)), float(np.std(sel_d)) or 1e-300
    m0, s0 = float(np.mean(sel_p)), float(np.std(sel_p)) or 1e-300
    lo, hi = min(m0 - 2 * s0, m1 - 12 * s1), max(m1 + 2 * s1, m0 + 12 * s0)
    t = np.linspace(lo, hi, 4001)
    fp = n_eval * norm.sf((t - m0) / s0)
    fn = n_eval * norm.cdf((t - m1) / s1)
    score = epsilon_lower_bound(clopper_pearson_upper(np.minimum(np.floor(fp), n_eval), n_eval, alpha_each),
                                clopper_pearson_upper(np.minimum(np.floor(fn), n_eval), n_eval, alpha_each),
                                delta)
    return float(t[int(np.argmax(score))])


THRESHOLD_RULES = ("gaussian", "empirical")


def threshold_audit(stat_pos, stat_neg, delta: float, alpha: float = 0.05,
                    select_fraction: float = 0.1, rule: str = "gaussian",
                    candidates: int = 256) -> dict:
    """Lower bound on epsilon from runs on two neighbours: ``stat_pos`` (larger under D) and
    ``stat_neg`` (D'), one statistic per run, runs independent.

    The first ``select_fraction`` of each array chooses the threshold t; the remaining runs,
    untouched by the choice, give FPR = P[s > t | D'], FNR = P[s <= t | D], their
    Clopper-Pearson upper bounds at level 1 - alpha/2 each (joint level >= 1 - alpha) and
    eps_lb (:func:`epsilon_lower_bound`).  ``rule``: ``"gaussian"`` (default) fits a
    Gaussian to each selection sample and takes the t with the largest expected evaluation
    bound: far less noisy than counting tail events, so a small selection part suffices;
    ``"empirical"`` takes the best of ~2 * ``candidates`` quantiles of the pooled selection
    runs, scored by their own Clopper-Pearson bounds at a Bonferroni level (distribution-free
    but needs about half the runs).  Either way t depends on the selection runs only, so
    the bound is valid whatever the distributions are.

    Returns dict(epsilon_lower_bound, threshold, eval_trials, fpr, fnr, fpr_ub, fnr_ub,
    epsilon_ceiling).
    """
    pos = np.asarray(stat_pos, dtype=np.float64)
    neg = np.asarray(stat_neg, dtype=np.float64)
    trials = min(len(pos), len(neg))
    if trials < 4:
        raise ValueError(f"need >= 4 runs per dataset, got {trials}")
    if not (0.0 < select_fraction < 1.0):
        raise ValueError(f"select_fraction must be in (0, 1), got {select_fraction!r}")
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    pos, neg = pos[:trials], neg[:trials]
    k = max(2, min(trials - 2, round(trials * select_fraction)))
    a_each = alpha / 2.0
    n_ev = trials - k
    if rule == "gaussian":
        t = _gaussian_threshold(pos[:k], neg[:k], n_ev, delta, a_each)
    else:
        t = _empirical_threshold(pos[:k], neg[:k], delta, a_each, candidates)
    fp = int(np.count_nonzero(neg[k:] > t))
    fn = int(np.count_nonzero(pos[k:] <= t))
    fpr_ub = clopper_pearson_upper(fp, n_ev, a_each)
    fnr_ub = clopper_pearson_upper(fn, n_ev, a_each)
    return {"epsilon_lower_bound": float(epsilon_lower_bound(fpr_ub, fnr_ub, delta)),
            "threshold": t, "eval_trials": n_ev, "fpr": fp / n_ev, "fnr": fn / n_ev,
            "fpr_ub": float(fpr_ub), "fnr_ub": float(fnr_ub),
            "epsilon_ceiling": max_certifiable_epsilon(n_ev, delta, alpha)}


# --------------------------------------------------------------------------
# one run, m canaries (Steinke, Nasr & Jagielski 2023)
# --------------------------------------------------------------------------
def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got "
                         f"m={m!r}, r={r!r}, v={v!r}")


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] under the null "the algorithm is (epsilon, delta)-DP".

    Steinke, Nasr & Jagielski (2023), Thm. 3.1 as computed by their Algorithm (App. D): with
    q = e^eps / (1 + e^eps) (the accuracy of eps-DP randomized response),

        p = P[Bin(r, q) >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= Bin(r, q) < v] / i.

    m canaries, each included independently with probability 1/2 (the theorem needs that),
    r guesses (the rest abstentions), v of them correct.  With delta = 0 it is the plain
    binomial tail.  Capped at 1.
    """
    _check_counts(m, r, v)
    if epsilon < 0 or not (0.0 <= delta <= 1.0):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon!r}, {delta!r}")
    q = float(expit(epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[Bin >= v]
    term = 0.0
    if delta > 0 and v > 0:
        pmf = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v - i], i = 1..v
        term = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * term)


def one_run_epsilon_lower_bound(m: int, r: int, v: int, delta: float, alpha: float = 0.05) -> float:
    """The largest epsilon the one-run audit refutes at level alpha: sup{eps : p(eps) < alpha}.

    :func:`one_run_p_value` increases with epsilon, so bisection (to 1e-6 absolute) on it;
    returns 0 when even epsilon = 0 is not refuted.  With delta = 0 this is the closed form
    logit(Clopper-Pearson lower bound on the guess accuracy v / r).
    """
    _check_counts(m, r, v)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, 2.0 * hi  # terminates: p -> P[Bin(r, 1) >= v] = 1 as eps grows
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_max_certifiable_epsilon(m: int, delta: float, alpha: float = 0.05) -> float:
    """The most a one-run audit with m canaries can certify: every one of r guesses right.

    Maximised over r = 2k, k in ``guess_counts(m, 32)`` (with delta > 0 more guesses are
    not always better: the delta term grows with m).  About log(r / ln(1/alpha)) for delta = 0.
    """
    return max(one_run_epsilon_lower_bound(m, 2 * k, 2 * k, delta, alpha)
               for k in guess_counts(m, 32))


def guess_counts(m: int, points: int = 16) -> list[int]:
    """A fixed grid of k (guess "in" for the k top scores, "out" for the k bottom ones).

    Geometric from 1 to m // 2; fixed before the scores are seen, so a Bonferroni correction
    over it (alpha / len(grid)) keeps the bound valid whichever k wins.
    """
    if m < 2:
        raise ValueError(f"need at least 2 canaries, got {m!r}")
    return sorted({int(round(x)) for x in np.geomspace(1, m // 2, points)})


def _correct_guesses(scores, included, k: int) -> int:
    """Correct guesses when "included" is guessed for the k highest scores, "excluded" for the
    k lowest (ties broken by position, a rule fixed in advance)."""
    ranked = np.asarray(included, dtype=bool)[np.argsort(scores, kind="stable")]
    return int(np.count_nonzero(ranked[len(ranked) - k:]) + np.count_nonzero(~ranked[:k]))


def one_run_audit(scores, included, delta: float, alpha: float = 0.05,
                  select_fraction: float | None = 0.5) -> dict:
    """Lower bound on epsilon from one (pooled) run: a score per canary, higher = "included".

    The auditor guesses "included" for the k highest scores and "excluded" for the k lowest
    (r = 2k guesses), counts the correct ones (v) and computes
    :func:`one_run_epsilon_lower_bound`.  k is chosen so that the bound stays valid:

    ``select_fraction`` (default 0.5): the first part of the canaries chooses the guessed
    fraction k/m (the best bound among :func:`guess_counts` on them); the other canaries,
    untouched by the choice, are guessed at that fraction and give the bound at level alpha
    with m = their number.  (Conditioning on the selection canaries' coins leaves the run
    (eps, delta)-DP with respect to each evaluation canary, which is all the theorem needs.)
    ``None``: all canaries, the best k of the grid at the Bonferroni level alpha / len(grid).

    ``included`` is the canaries' secret coin flips (each 1 with probability 1/2,
    independently, and independent of the order of the canaries).  Returns
    dict(epsilon_lower_bound, canaries (audited), guesses, correct, guess_fraction,
    epsilon_ceiling) where epsilon_ceiling is the most any guesses could certify at that
    level (:func:`one_run_max_certifiable_epsilon`).
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length, got {s.shape}, {inc.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    m = len(s)
    if select_fraction is None:
        grid = guess_counts(m)
        level = alpha / len(grid)
        bounds = [one_run_epsilon_lower_bound(m, 2 * k, _correct_guesses(s, inc, k), delta, level)
                  for k in grid]
        k = grid[int(np.argmax(bounds))]
        s_ev, i_ev = s, inc
    else:
        if not (0.0 < select_fraction < 1.0):
            raise ValueError(f"select_fraction must be in (0, 1) or None, got {select_fraction!r}")
        m_sel = max(2, min(m - 2, round(m * select_fraction)))
        s_sel, i_sel, s_ev, i_ev = s[:m_sel], inc[:m_sel], s[m_sel:], inc[m_sel:]
        grid = guess_counts(m_sel, 32)
        bounds = [one_run_epsilon_lower_bound(m_sel, 2 * j, _correct_guesses(s_sel, i_sel, j), delta, alpha)
                  for j in grid]
        frac = grid[int(np.argmax(bounds))] / m_sel
        level = alpha
        k = max(1, min(len(s_ev) // 2, round(frac * len(s_ev))))
    m_ev = len(s_ev)
    v = _correct_guesses(s_ev, i_ev, k)
    return {"epsilon_lower_bound": one_run_epsilon_lower_bound(m_ev, 2 * k, v, delta, level),
            "canaries": m_ev, "guesses": 2 * k, "correct": v,
            "epsilon_ceiling": one_run_max_certifiable_epsilon(m_ev, delta, level)}
