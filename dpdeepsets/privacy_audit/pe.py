"""Audit of Private Evolution's release: the vote histogram's sensitivity and the T noisy histograms.

Two checks of what :mod:`dpdeepsets.private_evolution` runs, each calling the pipeline's own
functions (or a ``histogram=`` / ``release=`` replacement with the same signature, so a
planted bug is audited the same way):

:func:`histogram_sensitivity_check`
    Real neighbouring datasets: private embeddings D and D minus one row, D plus one row
    (a copy of a row, a point on a candidate, a point equidistant from two candidates, a far
    point), D with one row replaced; candidate sets with plain and lookahead (mean of k
    embeddings) coordinates.  The worst L2 change of the noise-free histogram must stay
    within the sensitivity the privacy module claims
    (:data:`dpdeepsets.privacy.PE_HISTOGRAM_SENSITIVITY`: 1 add/remove, sqrt 2 replace-one).
:func:`audit_pe_release`
    Black-box threshold audit of the T-iteration release on worst-case neighbours
    (:func:`pe_worst_case_neighbours`: fixed candidates, the target example on candidate j of
    D and absent from D' -- or, for replace-one, moved to candidate i).  Per trial a fresh
    keyed noise source, per iteration its ``pe-histogram-{t}`` generator and one call of
    :func:`~dpdeepsets.private_evolution.noisy_histogram` with sigma from
    :func:`~dpdeepsets.privacy.pe_histogram_sigma`.  The statistic is the sum over the T
    iterations of the noisy counts projected onto the direction u in which the two noise-free
    histograms differ (bin j for add/remove; (e_j - e_i)/sqrt 2 for replace-one), computed
    with the histogram function under audit.  The counts are audited *before* the threshold:
    thresholding is post-processing, so it can only hide leakage from the test, never add it.
    Bound and ``caught``: :func:`~dpdeepsets.privacy_audit.stats.threshold_audit`, as in
    :mod:`.release` (a falsification test: a bound above the claim refutes it; below proves
    nothing; nothing above ``epsilon_ceiling`` can ever be shown).

Fixed candidates are a worst case the adaptive composition allows (every iteration has full
sensitivity), so the exact mechanism is (sqrt(T) Delta / sigma)-GDP; a release with half the
sigma, or a histogram that counts each vote twice, has twice that mu.  Measured (claim eps 2,
delta 1e-5, T = 2, audit seeds 0-5, the three neighbour kinds): with 12,000 trials per
neighbour the correct release audits to 0.6-1.2 and the halved sigma to 1.8-2.8 (caught in
about 3 of 4 seeds); with 20,000 trials (seeds 0-1) 0.9-1.1 and 2.2-2.7.  The margins are
thin, as in :mod:`.release`: a falsification test, never a proof.  The "two nearest,
unnormalised" bug (mu x sqrt 2) is flagged by the sensitivity check but not by this audit
(T = 3, 20,000 trials: 0.78 / 1.32 at claims 1 / 2).  numpy only (no torch); cost: one keyed
generator per iteration and trial (~40 us each), about 10^4 releases per second here when busy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from dpdeepsets import noise as N
from dpdeepsets import privacy as P
from dpdeepsets.private_evolution import noisy_histogram, vote_histogram

from .release import AUDIT_KEY, NEIGHBOUR_ADJACENCY, NEIGHBOURS
from .stats import threshold_audit

__all__ = [
    "random_candidate_sets",
    "histogram_sensitivity_check",
    "pe_worst_case_neighbours",
    "audit_pe_release",
    "noisy_histogram_sigma_halved",
    "vote_histogram_double_vote",
    "vote_histogram_two_nearest",
    "PLANTED_PE_BUGS",
]

_SLACK = 1e-9  # float rounding allowed above a claimed sensitivity


# --------------------------------------------------------------------------
# sensitivity on real neighbours
# --------------------------------------------------------------------------
def random_candidate_sets(private_embeddings, *, sizes=(1, 2, 8, 64), lookahead: int = 3,
                          seed: int = 0) -> list[np.ndarray]:
    """Candidate embedding sets for :func:`histogram_sensitivity_check`, public to the auditor.

    For every size: jittered private rows (votes spread over many bins, many near-ties),
    Gaussian points of the private rows' scale, and a lookahead set (each candidate the
    mean of ``lookahead`` jittered copies of a jittered private row, as lookahead averages k
    variations' embeddings).
    """
    p = np.asarray(private_embeddings, dtype=np.float64)
    rng = np.random.default_rng([int(seed), 0x9E])
    scale = float(p.std()) or 1.0
    sets = []
    for size in sizes:
        rows = p[rng.integers(0, len(p), size)]
        sets.append(rows + 0.1 * scale * rng.standard_normal(rows.shape))
        sets.append(p.mean(0) + scale * rng.standard_normal((size, p.shape[1])))
        jitter = 0.3 * scale * rng.standard_normal((max(1, lookahead), *rows.shape))
        sets.append((rows[None] + jitter).mean(0))
    return sets


def _new_rows(private: np.ndarray, candidates: np.ndarray, rng) -> list[np.ndarray]:
    """Rows to add or to replace with: a copy of a private row, a point on a candidate, a
    point equidistant from two candidates (a tie), a far point."""
    scale = float(np.abs(private).max() + np.abs(candidates).max()) or 1.0
    a, b = candidates[rng.integers(0, len(candidates), 2)]
    return [private[rng.integers(0, len(private))].copy(), a.copy(), 0.5 * (a + b),
            100.0 * scale * rng.standard_normal(private.shape[1])]


def histogram_sensitivity_check(private_embeddings, candidate_sets, *, neighbours_per_set: int = 50,
                                histogram: Callable = vote_histogram, seed: int = 0) -> dict:
    """Worst L2 change of ``histogram`` over real neighbours of ``private_embeddings``.

    For every candidate set and ``neighbours_per_set`` random draws: D minus a random row,
    D plus each row of :func:`_new_rows` (add/remove), and D with a random row replaced by
    each of them (replace-one); the noise-free histograms of D and its neighbour for the same
    candidates, and the L2 norm of their difference.  Also checks that every histogram sums
    to its number of rows (one vote per example).

    Returns dict(add_remove, replace_one (the largest changes seen), claimed (the privacy
    module's sensitivities), neighbours (pairs compared), votes_conserved, ok (both within
    their claims and votes conserved)).
    """
    p = np.asarray(private_embeddings, dtype=np.float64)
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"private_embeddings must be [n >= 2, d], got shape {p.shape}")
    rng = np.random.default_rng([int(seed), 0x5E5])
    worst = {"add_remove": 0.0, "replace_one": 0.0}
    pairs, conserved = 0, True

    def change(adjacency, d_set, d_prime, cand):
        nonlocal pairs, conserved
        h, h2 = np.asarray(histogram(d_set, cand), float), np.asarray(histogram(d_prime, cand), float)
        conserved &= bool(h.sum() == len(d_set) and h2.sum() == len(d_prime))
        worst[adjacency] = max(worst[adjacency], float(np.linalg.norm(h - h2)))
        pairs += 1

    for cand in candidate_sets:
        cand = np.asarray(cand, dtype=np.float64)
        for _ in range(neighbours_per_set):
            i = int(rng.integers(0, len(p)))
            change("add_remove", p, np.delete(p, i, axis=0), cand)
            for z in _new_rows(p, cand, rng):
                change("add_remove", np.vstack([p, z]), p, cand)
                replaced = p.copy()
                replaced[i] = z
                change("replace_one", p, replaced, cand)
    claimed = dict(P.PE_HISTOGRAM_SENSITIVITY)
    ok = conserved and all(worst[a] <= claimed[a] + _SLACK for a in worst)
    return {**worst, "claimed": claimed, "neighbours": pairs, "votes_conserved": conserved, "ok": ok}


# --------------------------------------------------------------------------
# the release, black box
# --------------------------------------------------------------------------
def pe_worst_case_neighbours(neighbours: str, n: int = 32, candidates: int = 8, dim: int = 16,
                             seed: int = 0):
    """(D, D', candidate embeddings) on which every iteration has full sensitivity.

    Well-separated candidates (Gaussian, scale 10); the n - 1 shared rows sit near random
    candidates; the target row sits on candidate 0.  ``remove``: D = shared + target
    (n rows), D' = shared.  ``add``: D = shared + target (n + 1 rows), D' = shared (n rows).
    ``replace``: D = shared + target, D' = shared + a row on candidate 1 (n rows each).
    """
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
    if n < 2 or candidates < 2 or dim < 1:
        raise ValueError(f"need n >= 2, candidates >= 2, dim >= 1, got {n!r}, {candidates!r}, {dim!r}")
    rng = np.random.default_rng([int(seed), 0x9E0])
    cand = 10.0 * rng.standard_normal((candidates, dim))
    k = n if neighbours == "add" else n - 1
    shared = cand[rng.integers(0, candidates, k)] + 0.1 * rng.standard_normal((k, dim))
    target = cand[0] + 0.01 * rng.standard_normal(dim)
    if neighbours == "replace":
        return np.vstack([shared, target]), np.vstack([shared, cand[1]]), cand
    return np.vstack([shared, target]), shared, cand


def audit_pe_release(
    epsilon: float,
    delta: float,
    *,
    iterations: int,
    trials: int,
    neighbours: str = "remove",
    release: Callable = noisy_histogram,
    histogram: Callable = vote_histogram,
    threshold: float = 0.0,
    key: bytes = AUDIT_KEY,
    seed: int = 0,
    n: int = 32,
    candidates: int = 8,
    dim: int = 16,
    alpha: float = 0.05,
    select_fraction: float = 0.1,
    rule: str = "gaussian",
) -> dict:
    """Empirical lower bound on the epsilon of the T-iteration PE release (see the module docstring).

    Per dataset and trial: a :class:`~dpdeepsets.noise.KeyedNoise` with ``key`` and cell
    identity (audit, epsilon, neighbours, dataset, seed, trial); per iteration t its
    ``numpy_rng(f"pe-histogram-{t}")`` and ``release(counts, sigma=, threshold=, rng=)``
    with counts = ``histogram(dataset, candidates)`` and sigma =
    :func:`~dpdeepsets.privacy.pe_histogram_sigma` (epsilon, delta, iterations, the
    neighbours' adjacency).  Statistic: sum over t of <noisy counts, u>.

    Returns dict(epsilon_claimed, epsilon_lower_bound, epsilon_ceiling, caught, neighbours,
    adjacency, iterations, sigma, gap (||h(D) - h(D')||), trials, eval_trials, threshold
    (the test's), fpr, fnr, fpr_ub, fnr_ub, alpha, delta, release, histogram (their names),
    seconds, calls_per_second).
    """
    e = float(epsilon)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"epsilon must be positive and finite to be audited, got {epsilon!r}")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 4:
        raise ValueError(f"trials must be an integer >= 4, got {trials!r}")
    adjacency = NEIGHBOUR_ADJACENCY.get(neighbours)
    d_set, d_prime, cand = pe_worst_case_neighbours(neighbours, n, candidates, dim, seed)
    sigma = P.pe_histogram_sigma(e, delta, iterations, adjacency)
    counts = {"D": histogram(d_set, cand), "D'": histogram(d_prime, cand)}
    diff = np.asarray(counts["D"], float) - np.asarray(counts["D'"], float)
    gap = float(np.linalg.norm(diff))
    u = diff / gap if gap > 0 else np.eye(len(diff))[0]
    t0 = time.perf_counter()
    stats = {}
    for name, c in counts.items():
        s = np.zeros(trials)
        for i in range(trials):
            src = N.KeyedNoise(key, N.cell_identity(audit="pe-release", epsilon=e, neighbours=neighbours,
                                                    dataset=name, seed=int(seed), trial=i))
            for t in range(1, iterations + 1):
                noisy, _ = release(c, sigma=sigma, threshold=threshold, rng=src.numpy_rng(f"pe-histogram-{t}"))
                s[i] += np.asarray(noisy, dtype=np.float64) @ u
        stats[name] = s
    seconds = time.perf_counter() - t0
    r = threshold_audit(stats["D"], stats["D'"], delta, alpha, select_fraction, rule)
    return {
        "epsilon_claimed": e, **r, "caught": r["epsilon_lower_bound"] > e,
        "neighbours": neighbours, "adjacency": adjacency, "iterations": int(iterations),
        "sigma": float(sigma), "gap": gap, "trials": int(trials), "alpha": float(alpha),
        "delta": float(delta), "release": getattr(release, "__name__", repr(release)),
        "histogram": getattr(histogram, "__name__", repr(histogram)), "seconds": seconds,
        "calls_per_second": 2 * trials * iterations / seconds,
    }


# --------------------------------------------------------------------------
# planted bugs: what the audits must catch
# --------------------------------------------------------------------------
def noisy_histogram_sigma_halved(counts, *, sigma, threshold, rng):
    """PLANTED BUG: the release with half the sigma it was given."""
    return noisy_histogram(counts, sigma=0.5 * sigma, threshold=threshold, rng=rng)


def vote_histogram_double_vote(private_embeddings, candidate_embeddings):
    """PLANTED BUG: every example's vote counts twice (sensitivity 2, claimed 1)."""
    return 2 * vote_histogram(private_embeddings, candidate_embeddings)


def vote_histogram_two_nearest(private_embeddings, candidate_embeddings):
    """PLANTED BUG: every example votes for its two nearest candidates, unnormalised (as with
    DPSDA's num_nearest_neighbor = 2 without its sqrt(2) noise factor): add/remove
    sensitivity sqrt 2, replace-one 2, claimed 1 and sqrt 2."""
    p = np.asarray(private_embeddings, dtype=np.float64)
    c = np.asarray(candidate_embeddings, dtype=np.float64)
    d2 = ((p[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    top2 = np.argsort(d2, axis=1, kind="stable")[:, :2]
    return np.bincount(top2.ravel(), minlength=len(c)).astype(np.int64)


# keyword arguments of audit_pe_release that plant each bug (the histogram ones also fit
# histogram_sensitivity_check)
PLANTED_PE_BUGS = {
    "sigma halved": {"release": noisy_histogram_sigma_halved},
    "double vote": {"histogram": vote_histogram_double_vote},
    "two nearest, unnormalised": {"histogram": vote_histogram_two_nearest},
}
