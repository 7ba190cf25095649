"""The result tables: metrics, summary with paired bootstrap intervals, specificity, ledger, budget.

Units of replication are (private set, seed) pairs: every method is evaluated on the same
units, so a method's margin over DP-DeepSets is a *paired* difference per unit, and its 95 %
interval is a percentile bootstrap over units (resampled with replacement). With few units
the interval is wide: that is the honest answer, not a defect of the table.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from . import methods as M
from .io import atomic_path, format_epsilon, parse_epsilon, read_json

CELL_RE = re.compile(r"(?P<method>[a-z_]+)/(?P<pset>p\d+|all)/eps(?P<eps>[^_/]+)_seed(?P<seed>\d+)\.\w+$")
SCORE_COLUMNS = ("fid", "kid", "precision", "recall", "density", "coverage")


def parse_cell(path) -> dict:
    """method, pset, eps (wildcard spelling), epsilon (float) and seed of a cell's file path."""
    m = CELL_RE.search(str(path))
    if m is None:
        raise ValueError(f"not a cell path of this pipeline: {path}")
    cell = m.groupdict()
    cell["epsilon"] = parse_epsilon(cell["eps"])
    cell["seed"] = int(cell["seed"])
    return cell


def write_csv(path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the registry's method order, then by the cell columns present."""
    rank = {name: i for i, name in enumerate(M.REGISTRY)}
    keys = ["_r"] + [k for k in ("epsilon", "compared_at_epsilon", "pset", "seed", "replicate",
                                 "scored_against")
                     if k in df]
    return df.assign(_r=df["method"].map(rank)).sort_values(keys).drop(columns="_r").reset_index(drop=True)


def read_scores(score_files) -> pd.DataFrame:
    df = pd.concat([pd.read_csv(f) for f in score_files], ignore_index=True)
    df["epsilon"] = df["epsilon"].map(parse_epsilon)
    return df


def metrics_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, private set, epsilon, seed): each cell scored against its own set.

    A public-only method (pset 'all') has one cell per seed; its rows against every private
    set are its metrics on that set (pset = the set).
    """
    own = scores[(scores["pset"] == scores["scored_against"]) | (scores["pset"] == "all")].copy()
    own["pset"] = own["scored_against"]
    keep = ["method", "pset", "epsilon", "seed", *[c for c in SCORE_COLUMNS if c in own],
            *[c for c in ("class_tv", "n_samples", "n_reference") if c in own]]
    return _order(own[keep])


def _bootstrap_mean(values: np.ndarray, resamples: int, rng) -> tuple[float, float]:
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summary_table(metrics: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (method, epsilon): mean and std of the scores over units, and the paired margin.

    ``fid_margin`` = the method's FID minus DP-DeepSets' on the same unit, averaged over
    units (positive: DP-DeepSets better), with a 95 % bootstrap interval
    (``fid_margin_lo``/``_hi``) and ``significant`` when it excludes 0; the same for KID.
    A method with an epsilon grid is compared at the same epsilon; a method without one
    (public-only at epsilon 0, the non-private reference at inf) is compared with
    DP-DeepSets at every finite epsilon (``compared_at_epsilon``).
    """
    rng = np.random.default_rng(seed)
    ours = metrics[metrics["method"] == "dpdeepsets"].set_index(["epsilon", "pset", "seed"])
    ours_eps = sorted(e for e in metrics.loc[metrics["method"] == "dpdeepsets", "epsilon"].unique()
                      if math.isfinite(e))
    rows = []
    for (method, eps), g in metrics.groupby(["method", "epsilon"], sort=False):
        stats = {"n_cells": len(g)}
        for c in SCORE_COLUMNS:
            if c in g:
                stats[f"{c}_mean"], stats[f"{c}_std"] = g[c].mean(), g[c].std()
        grid = M.get(method).has_grid
        targets = [eps] if grid or method == "dpdeepsets" else ours_eps
        for at in targets:
            row = {"method": method, "epsilon": eps, "compared_at_epsilon": at, **stats}
            if method != "dpdeepsets" and math.isfinite(at) and len(ours):
                for c in ("fid", "kid"):
                    diffs = np.array([r[c] - ours.loc[(at, r["pset"], r["seed"]), c]
                                      for _, r in g.iterrows() if (at, r["pset"], r["seed"]) in ours.index])
                    if len(diffs):
                        lo, hi = _bootstrap_mean(diffs, resamples, rng)
                        row.update({f"{c}_margin": diffs.mean(), f"{c}_margin_lo": lo,
                                    f"{c}_margin_hi": hi, "n_units": len(diffs)})
                row["significant"] = bool(row.get("fid_margin_lo", math.nan) > 0
                                          or row.get("fid_margin_hi", math.nan) < 0)
            rows.append(row)
    return _order(pd.DataFrame(rows))


def specificity_table(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All (cell, scored-against set) rows, and per (method, epsilon) how often a cell's own
    set is the closest one: by FID (``own_closest_fid``) and by class histogram
    (``own_closest_class``), out of ``cells``."""
    per_set = scores[scores["pset"] != "all"]
    rows = []
    for (method, eps), g in per_set.groupby(["method", "epsilon"], sort=False):
        hits_fid = hits_cls = cells = 0
        for _, cell in g.groupby(["pset", "seed"]):
            cells += 1
            own = cell["pset"].iloc[0]
            hits_fid += cell.loc[cell["fid"].idxmin(), "scored_against"] == own
            if "class_tv" in cell and cell["class_tv"].notna().all():
                hits_cls += cell.loc[cell["class_tv"].idxmin(), "scored_against"] == own
        rows.append({"method": method, "epsilon": eps, "cells": cells,
                     "own_closest_fid": int(hits_fid), "own_closest_class": int(hits_cls)})
    return _order(scores), _order(pd.DataFrame(rows))


def ledger_table(files) -> pd.DataFrame:
    """Every release and every fit's ledger entry (adjacency, mechanism and noise source on
    every row; no seed is ever recorded), one row each."""
    rows = []
    for f in files:
        led = dict(read_json(f)["ledger"])
        led["epsilon"] = parse_epsilon(led["epsilon"])
        for k in ("accounted_epsilon",):
            if k in led:
                led[k] = parse_epsilon(led[k])
        led["file"] = str(f)
        rows.append(led)
    df = pd.DataFrame(rows)
    first = ["pset", "replicate", "method", "epsilon", "delta", "adjacency", "mechanism", "private",
             "sigma", "sensitivity", "n", "noise_source", "key_fingerprint", "accountant",
             "accounted_epsilon"]
    cols = [c for c in first if c in df] + [c for c in df.columns if c not in first]
    return _order(df[cols].assign(replicate=df["replicate"].astype(int)))


def budget_table(ledger: pd.DataFrame, figure_epsilon: float, delta: float) -> pd.DataFrame:
    """What publishing each artifact costs each private set: the composition of the releases
    and fits it depends on (dpdeepsets.privacy.compose_ledger).

    nearest_public_lora reads DP-DeepSets' own releases, so it adds nothing; non-private
    reference rows (epsilon = inf) are not DP at all and are listed apart.
    """
    from .privacy import compose_ledger

    private = ledger[ledger["private"].astype(bool)]
    rows = []
    for pset, g in private.groupby("pset"):
        def add(artifact, sel):
            if len(sel):
                c = compose_ledger(sel.to_dict("records"), delta)
                rows.append({"pset": pset, "artifact": artifact, "entries": c["n_entries"],
                             "epsilon": c["epsilon"], "delta": delta,
                             "composition": c["composition"]})
        fig = g[g["epsilon"] == figure_epsilon]
        add(f"samples.png (every DP method at epsilon {format_epsilon(figure_epsilon)}, all seeds)", fig)
        add("samples_vs_epsilon.png and the DP-DeepSets / nearest_public_lora adapters",
            g[g["mechanism"] == "analytic_gaussian"])
        for method, gm in g[g["mechanism"] != "analytic_gaussian"].groupby("method"):
            add(f"every {method} adapter", gm)
        add("everything DP published from this set", g)
    out = pd.DataFrame(rows)
    refs = ledger[~ledger["private"].astype(bool)]
    if len(refs):
        out = pd.concat([out, pd.DataFrame([{
            "pset": p, "artifact": "epsilon = inf references (NOT private; never in a released figure)",
            "entries": len(r), "epsilon": math.inf, "delta": 1.0, "composition": "none"}
            for p, r in refs.groupby("pset")])], ignore_index=True)
    return out
