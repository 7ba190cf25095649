"""Audit of Private Evolution's release (dpdeepsets.privacy_audit.pe).

The sensitivity check must find exactly the claimed sensitivities for the pipeline's vote
histogram (the worst case is reached, not just bounded) and flag the planted histogram bugs;
the black-box audit of the T noisy histograms must not catch the correct release and must
catch the release with half its sigma (eps 2, T = 2, 12,000 trials per neighbour: the audit
noise is keyed by a fixed public key, so the outcome is reproducible; at this budget the
halved release is caught in about 3 of 4 audit seeds, see the module docstring).
"""

import math

import numpy as np
import pytest
import torch

from dpdeepsets import privacy as P
from dpdeepsets import private_evolution as PE
from dpdeepsets.privacy_audit import pe as A

EPS, DELTA, T, TRIALS = 2.0, 1e-5, 2, 12_000


@pytest.fixture(scope="module")
def private():
    """A private set of 40 embeddings in 6 clusters (many near-ties between candidates)."""
    rng = np.random.default_rng(7)
    centres = 3.0 * rng.standard_normal((6, 8))
    return centres[rng.integers(0, 6, 40)] + rng.standard_normal((40, 8))


def test_vote_histogram_has_exactly_the_claimed_sensitivity(private):
    r = A.histogram_sensitivity_check(private, A.random_candidate_sets(private), neighbours_per_set=20)
    assert r["ok"] and r["votes_conserved"] and r["neighbours"] == 12 * 20 * 9
    assert r["claimed"] == {"add_remove": 1.0, "replace_one": math.sqrt(2.0)}
    assert r["add_remove"] == 1.0  # reached: a removed row always takes one vote away
    assert r["replace_one"] == pytest.approx(math.sqrt(2.0), abs=1e-15)  # reached: a vote moved


def test_sensitivity_holds_for_real_lookahead_embeddings(tiny_unet, private):
    unet, sched = tiny_unet
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = PE.random_api(unet, sched, num_samples=8, steps=4, seed=0)
        gen = torch.Generator().manual_seed(0)
        vary = lambda x: PE.variation_api(x, unet, sched, strength=0.5, steps=4, generator=gen)  # noqa: E731
        cand = PE.lookahead_embeddings(images, _embed8, lookahead=2, vary=vary)
    finally:
        torch.set_num_threads(before)
    assert not np.allclose(cand, _embed8(images))  # lookahead moved the candidates
    priv = cand[np.arange(40) % 8] + 0.05 * np.random.default_rng(1).standard_normal((40, 8))
    r = A.histogram_sensitivity_check(priv, [cand], neighbours_per_set=30)
    assert r["ok"] and r["add_remove"] == 1.0 and r["replace_one"] == pytest.approx(math.sqrt(2.0))


def _embed8(images):
    """8 public features of a 16-px image: mean pixel of each of 8 horizontal bands of 2 rows."""
    x = images.astype(np.float64)[..., 0] / 255.0
    return x.reshape(len(x), 8, 2, 16).mean(axis=(2, 3))


@pytest.mark.parametrize("bug,add_remove,replace_one", [
    ("double vote", 2.0, 2.0 * math.sqrt(2.0)),
    ("two nearest, unnormalised", math.sqrt(2.0), 2.0),
])
def test_planted_histogram_bugs_exceed_the_sensitivity(private, bug, add_remove, replace_one):
    r = A.histogram_sensitivity_check(private, A.random_candidate_sets(private), neighbours_per_set=20,
                                      **A.PLANTED_PE_BUGS[bug])
    assert not r["ok"]
    assert r["add_remove"] == pytest.approx(add_remove) and r["replace_one"] == pytest.approx(replace_one)


@pytest.mark.parametrize("neighbours,rows,gap", [("remove", (32, 31), 1.0), ("add", (33, 32), 1.0),
                                                 ("replace", (32, 32), math.sqrt(2.0))])
def test_worst_case_neighbours_differ_by_the_sensitivity(neighbours, rows, gap):
    d, d_prime, cand = A.pe_worst_case_neighbours(neighbours)
    assert (len(d), len(d_prime)) == rows
    diff = PE.vote_histogram(d, cand) - PE.vote_histogram(d_prime, cand)
    assert np.linalg.norm(diff) == pytest.approx(gap) and diff[0] == 1
    assert P.PE_HISTOGRAM_SENSITIVITY[A.NEIGHBOUR_ADJACENCY[neighbours]] == pytest.approx(gap)


@pytest.fixture(scope="module")
def correct():
    return A.audit_pe_release(EPS, DELTA, iterations=T, trials=TRIALS, threshold=1.0)


def test_correct_release_is_not_caught(correct):
    assert correct["release"] == "noisy_histogram" and correct["histogram"] == "vote_histogram"
    assert correct["sigma"] == P.pe_histogram_sigma(EPS, DELTA, T, "add_remove")
    assert correct["eval_trials"] == 10_800 and correct["gap"] == 1.0
    assert not correct["caught"]
    assert 0.0 < correct["epsilon_lower_bound"] <= EPS  # the audit sees leakage, below the claim


def test_release_with_half_the_sigma_is_caught(correct):
    r = A.audit_pe_release(EPS, DELTA, iterations=T, trials=TRIALS, threshold=1.0,
                           **A.PLANTED_PE_BUGS["sigma halved"])
    assert r["release"] == "noisy_histogram_sigma_halved" and r["sigma"] == correct["sigma"]
    assert r["caught"] and r["epsilon_lower_bound"] > correct["epsilon_lower_bound"]


def test_release_audit_runs_the_histogram_under_audit():
    r = A.audit_pe_release(EPS, DELTA, iterations=1, trials=200, **A.PLANTED_PE_BUGS["double vote"])
    assert r["histogram"] == "vote_histogram_double_vote" and r["gap"] == 2.0


def test_audit_refuses_what_it_cannot_audit():
    with pytest.raises(ValueError, match="epsilon"):
        A.audit_pe_release(math.inf, DELTA, iterations=T, trials=100)
    with pytest.raises(ValueError, match="trials"):
        A.audit_pe_release(EPS, DELTA, iterations=T, trials=2)
    with pytest.raises(ValueError, match="neighbours"):
        A.pe_worst_case_neighbours("swap")
