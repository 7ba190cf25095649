"""The result tables: metrics, summary with paired t-intervals, specificity, ledger, budget.

Units of replication are the private sets, which are disjoint (subsets.disjoint), so their
scores are independent draws. Seeds repeat the noise and the sampling on the SAME private
data: they are averaged within a set, not counted as units. Every method is evaluated on
the same sets, so a method's margin over DP-DeepSets is a *paired* difference per set, and
its 95 % interval is a Student-t interval over sets (P - 1 degrees of freedom). A
percentile bootstrap would not do: over 3 units it is the [min, max] of three numbers,
which excludes 0 whenever the three agree in sign (one time in four under the null). With
few sets the t-interval is wide: that is the honest answer, not a defect of the table.
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


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of the mean of independent ``values``
    (len - 1 degrees of freedom); lo = hi = nan with fewer than 2 values."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def per_set(metrics: pd.DataFrame, column: str) -> pd.Series:
    """``column`` averaged over seeds within each (method, epsilon, private set): one value per unit."""
    return metrics.groupby(["method", "epsilon", "pset"])[column].mean().sort_index()


def summary_table(metrics: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per (method, epsilon): mean and std of the scores over cells, and the paired margin.

    ``fid_margin`` = the method's FID minus DP-DeepSets' on the same private set (both
    averaged over seeds first), averaged over sets (positive: DP-DeepSets better), with a
    Student-t interval over sets (``fid_margin_lo``/``_hi``, ``interval`` names it) and
    ``significant`` when it excludes 0; the same for KID. ``n_units`` is the number of
    sets. A method with an epsilon grid is compared at the same epsilon; a method without
    one (public-only at epsilon 0, the non-private references at inf) is compared with
    DP-DeepSets at every finite epsilon (``compared_at_epsilon``).
    """
    ours_eps = sorted(e for e in metrics.loc[metrics["method"] == "dpdeepsets", "epsilon"].unique()
                      if math.isfinite(e))
    units = {c: per_set(metrics, c) for c in ("fid", "kid") if c in metrics}
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
            if method != "dpdeepsets" and math.isfinite(at) and ("dpdeepsets", at) in units["fid"]:
                for c, u in units.items():
                    mine, ours = u.loc[(method, eps)], u.loc[("dpdeepsets", at)]
                    common = mine.index.intersection(ours.index)
                    if len(common):
                        m, lo, hi = t_interval(mine[common] - ours[common], confidence)
                        row.update({f"{c}_margin": m, f"{c}_margin_lo": lo, f"{c}_margin_hi": hi,
                                    "n_units": len(common)})
                if "n_units" in row:
                    row["interval"] = (f"{confidence:.0%} Student t over {row['n_units']} private sets "
                                       f"({row['n_units'] - 1} df), seeds averaged within a set")
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


def budget_table(ledger: pd.DataFrame, figure_epsilon: float, delta: float,
                 membership: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """What publishing each artifact costs each private set, and each private example.

    Per set: the composition of the releases and fits each artifact depends on
    (dpdeepsets.privacy.compose_ledger); nearest_public_lora reads DP-DeepSets' own releases,
    so it adds nothing; non-private reference rows (epsilon = inf) are not DP at all and are
    listed apart.

    Per person (``membership``: private set id -> the private-pool rows it holds): a private
    example pays for everything published from EVERY set that contains it. Examples are
    grouped by the sets they belong to; one row per group ("person in p1+p2") composes all
    those sets' entries, and a last row gives the worst-off example. With disjoint sets
    (subsets.disjoint, the default) every group is one set and the per-person epsilon equals
    the per-set one; with overlapping sets it is larger, and which groups exist depends on
    the private data (so those rows are evaluation output, not a DP release).
    """
    from .privacy import compose_ledger

    private = ledger[ledger["private"].astype(bool)]
    rows = []

    def add(pset, artifact, sel):
        if len(sel):
            c = compose_ledger(sel.to_dict("records"), delta)
            rows.append({"pset": pset, "artifact": artifact, "entries": c["n_entries"],
                         "epsilon": c["epsilon"], "delta": delta, "composition": c["composition"]})

    for pset, g in private.groupby("pset"):
        fig = g[g["epsilon"] == figure_epsilon]
        add(pset, f"samples.png (every DP method at epsilon {format_epsilon(figure_epsilon)}, all seeds)", fig)
        add(pset, "samples_vs_epsilon.png and the DP-DeepSets / nearest_public_lora adapters",
            g[g["mechanism"] == "analytic_gaussian"])
        for method, gm in g[g["mechanism"] != "analytic_gaussian"].groupby("method"):
            add(pset, f"every {method} output (its adapters or samples)", gm)
        add(pset, "everything DP published from this set", g)
    if membership:
        groups: dict[tuple[str, ...], int] = {}
        owner: dict[int, list[str]] = {}
        for pset, rows_of_set in membership.items():
            for r in np.asarray(rows_of_set).ravel().tolist():
                owner.setdefault(int(r), []).append(pset)
        for sets in owner.values():
            key = tuple(sorted(set(sets)))
            groups[key] = groups.get(key, 0) + 1
        worst = None
        for key, count in sorted(groups.items()):
            before = len(rows)
            add("+".join(key), f"everything DP published about a person in {' and '.join(key)} "
                               f"({count} private examples)", private[private["pset"].isin(key)])
            if len(rows) > before and (worst is None or rows[-1]["epsilon"] > worst["epsilon"]):
                worst = rows[-1]
        if worst is not None:
            rows.append({**worst, "pset": "per person",
                         "artifact": f"everything DP published about the worst-off private example "
                                     f"(in {worst['pset'].replace('+', ' and ')})"})
    out = pd.DataFrame(rows)
    refs = ledger[~ledger["private"].astype(bool)]
    if len(refs):
        out = pd.concat([out, pd.DataFrame([{
            "pset": p, "artifact": "epsilon = inf references (NOT private; never in a released figure)",
            "entries": len(r), "epsilon": math.inf, "delta": 1.0, "composition": "none"}
            for p, r in refs.groupby("pset")])], ignore_index=True)
    return out
