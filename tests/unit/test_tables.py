"""The summary's intervals over private sets and the privacy budget per set and per person."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dpdeepsets import privacy as P
from dpdeepsets import tables as T


def test_t_interval_is_scipys():
    v = np.array([3.1, -0.4, 2.2, 5.0, 1.7, 0.9, 2.8, 4.1])
    m, lo, hi = T.t_interval(v)
    ref = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert m == pytest.approx(v.mean()) and (lo, hi) == pytest.approx(ref)
    assert all(math.isnan(x) for x in T.t_interval([1.0])[1:])


def _metrics(sets=4, seeds=2, gap=2.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(sets):
        hard = rng.normal(0, 5)  # sets differ in difficulty; the margin is paired
        for s in range(seeds):
            for method, extra in (("dpdeepsets", 0.0), ("dpsgd", gap)):
                rows.append({"method": method, "pset": f"p{p}", "epsilon": 1.0, "seed": s,
                             "fid": 80 + hard + extra + rng.normal(0, 0.5),
                             "kid": 0.01 + rng.normal(0, 1e-3)})
    return pd.DataFrame(rows)


def test_summary_units_are_sets_not_set_seed_pairs():
    m = _metrics(sets=4, seeds=3)
    row = T.summary_table(m).set_index("method").loc["dpsgd"]
    assert row["n_units"] == 4 and row["n_cells"] == 12
    per = m.groupby(["method", "pset"])["fid"].mean()
    diff = (per["dpsgd"] - per["dpdeepsets"]).to_numpy()
    ref = stats.t.interval(0.95, 3, loc=diff.mean(), scale=stats.sem(diff))
    assert row["fid_margin"] == pytest.approx(diff.mean())
    assert (row["fid_margin_lo"], row["fid_margin_hi"]) == pytest.approx(ref)
    assert "3 df" in row["interval"]


def test_three_units_agreeing_in_sign_are_not_automatically_significant():
    """The old percentile bootstrap over 3 units called [min, max] an interval: three margins
    of one sign were always 'significant'. The t-interval is not fooled by that."""
    m = _metrics(sets=3, seeds=1, gap=0.0, seed=4)
    diffs = [0.3, 2.5, 0.1]
    m.loc[m["method"] == "dpsgd", "fid"] = m.loc[m["method"] == "dpdeepsets", "fid"].to_numpy() + diffs
    row = T.summary_table(m).set_index("method").loc["dpsgd"]
    assert row["fid_margin_lo"] < 0 < row["fid_margin_hi"] and not row["significant"]


def _release(pset, eps, sigma, sens=1 / 128):
    return {"pset": pset, "replicate": 0, "method": "dpdeepsets", "epsilon": eps, "delta": 1e-5,
            "adjacency": "add_remove", "mechanism": "analytic_gaussian", "private": True,
            "sigma": sigma, "sensitivity": sens}


def _gdp_eps(ratios, delta=1e-5):
    """Independent math: mu-GDP of Gaussian releases, mu = sqrt(sum (Delta/sigma)^2), and the
    epsilon at delta from Dong, Roth & Su's delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2),
    solved with scipy's brentq."""
    from scipy.optimize import brentq

    mu = math.sqrt(sum(r * r for r in ratios))
    f = lambda e: stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2) - delta  # noqa: E731
    return brentq(f, 0.0, 200.0, xtol=1e-12)


def test_budget_per_person_equals_per_set_when_sets_are_disjoint():
    ledger = pd.DataFrame([_release("p0", 1.0, 0.03), _release("p0", 4.0, 0.009),
                           _release("p1", 1.0, 0.03)])
    members = {"p0": np.arange(0, 10), "p1": np.arange(10, 20)}
    b = T.budget_table(ledger, 1.0, 1e-5, members)
    everything = b[b["artifact"].str.startswith("everything DP published from")].set_index("pset")["epsilon"]
    person = b[b["artifact"].str.contains("about a person")].set_index("pset")["epsilon"]
    assert person.to_dict() == pytest.approx(everything.to_dict())
    worst = b.set_index("pset").loc["per person", "epsilon"]
    assert worst == pytest.approx(max(everything))
    assert worst == pytest.approx(_gdp_eps([(1 / 128) / 0.03, (1 / 128) / 0.009]), rel=1e-6)


def test_budget_per_person_composes_every_set_that_holds_the_person():
    """p1 and p2 share rows 15-19: a person there pays for both sets' releases."""
    ledger = pd.DataFrame([_release("p0", 1.0, 0.03), _release("p1", 1.0, 0.03),
                           _release("p2", 4.0, 0.009)])
    members = {"p0": np.arange(0, 10), "p1": np.arange(10, 20), "p2": np.arange(15, 25)}
    b = T.budget_table(ledger, 1.0, 1e-5, members)
    rows = b.set_index("pset")
    both = rows.loc["p1+p2", "epsilon"]
    assert "5 private examples" in rows.loc["p1+p2", "artifact"]
    assert both == pytest.approx(_gdp_eps([(1 / 128) / 0.03, (1 / 128) / 0.009]), rel=1e-6)
    per_set = b[b["artifact"].str.startswith("everything DP published from")]["epsilon"]
    assert both > per_set.max() + 0.1  # per set understates what the shared people pay
    assert rows.loc["per person", "epsilon"] == pytest.approx(both)
    assert both == pytest.approx(P.compose_ledger([_release("p1", 1.0, 0.03),
                                                   _release("p2", 4.0, 0.009)], 1e-5)["epsilon"])
