#!/usr/bin/env python
"""The comparison of a finished run as the README prints it, written as a log with a header.

    python benchmarks/run_summary.py [RESULTS] [--log benchmarks/results/default_run.log]

Reads RESULTS/summary.csv (rule `report`) and RESULTS/metrics.csv and prints, in Markdown:

- the main table: mean FID over the run's private sets per (method, epsilon) and, in brackets,
  the paired margin to DP-DeepSets (method - DP-DeepSets on the same set; positive = DP-DeepSets
  better) with the summary's interval (a Student-t interval over the disjoint sets), in bold
  when it excludes 0;
- the methods without an epsilon grid (public-only at epsilon 0, the NOT private references at
  inf), each with its margin to DP-DeepSets at every finite epsilon;
- every cell's FID per set (the units the intervals are over), so a reader can see the spread;
- when RESULTS/hypernet/validation.csv exists (rule `train_hypernet`): the hypernetwork's public
  validation, the mean denoising loss over the public proxy sets per (method, epsilon) and its
  change relative to the base model (public data only; this is what chose the levers).

Nothing is computed here that the pipeline did not compute: the numbers are summary.csv's.
EVALUATION ONLY: the tables score samples against the private sets (no DP guarantee covers them).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from _header import log_header, print_log  # benchmarks/_header.py: command, commit, date; atomic log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dpdeepsets import methods as M  # noqa: E402


def _eps(e: float) -> str:
    return "inf" if math.isinf(e) else f"{e:g}"


def _margin(row) -> str:
    if pd.isna(row.get("fid_margin")):
        return ""
    text = f"{row.fid_margin:+.1f} [{row.fid_margin_lo:.1f}, {row.fid_margin_hi:.1f}]"
    return f"**{text}**" if bool(row.significant) else text


def tables(summary: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    order = [m for m in M.REGISTRY if m in set(summary.method)]
    grid = sorted(e for e in summary.loc[summary.method == "dpdeepsets", "epsilon"].unique()
                  if math.isfinite(e))
    units = summary["interval"].dropna().iloc[0] if summary["interval"].notna().any() else "-"
    out = [f"interval: {units}", "",
           "FID, mean over sets (margin to DP-DeepSets [95 % interval]; bold = excludes 0)", "",
           "| method | " + " | ".join(f"ε = {_eps(e)}" for e in grid) + " |",
           "|---|" + "---|" * len(grid)]
    for m in order:
        if not (M.get(m).has_grid or m == "dpdeepsets"):
            continue
        cells = []
        for e in grid:
            row = summary[(summary.method == m) & (summary.epsilon == e)]
            cells.append("" if row.empty else f"{row.fid_mean.iloc[0]:.1f} {_margin(row.iloc[0])}".strip())
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", "Without an epsilon grid (public-only at epsilon 0; NOT private at inf): FID, and the "
            "margin to DP-DeepSets at each of its epsilons", "",
            "| method | epsilon | FID | " + " | ".join(f"vs ε = {_eps(e)}" for e in grid) + " |",
            "|---|---|---|" + "---|" * len(grid)]
    for m in order:
        rows = summary[(summary.method == m) & ~(summary.epsilon.isin(grid))]
        for eps, g in rows.groupby("epsilon"):
            by_at = {r.compared_at_epsilon: _margin(r) for _, r in g.iterrows()}
            out.append(f"| {m} | {_eps(eps)} | {g.fid_mean.iloc[0]:.1f} | "
                       + " | ".join(by_at.get(e, "") for e in grid) + " |")
    per_set = (metrics.groupby(["method", "epsilon", "pset"])["fid"].mean().unstack("pset")
               .reset_index())
    per_set["_r"] = per_set["method"].map({m: i for i, m in enumerate(order)})
    per_set = per_set.sort_values(["_r", "epsilon"]).drop(columns="_r")
    out += ["", "FID per private set (seeds averaged): the units of the intervals", "",
            per_set.to_string(index=False, float_format=lambda v: f"{v:.1f}")]
    return out


def validation(table: pd.DataFrame) -> list[str]:
    """The public validation of ``train_hypernet``: mean denoising loss over the proxy sets per
    (method, epsilon), and its change relative to the base model's mean (negative = lower loss)."""
    need = {"proxy", "epsilon", "method", "loss"}
    if not need <= set(table.columns):
        raise ValueError(f"hypernet/validation.csv lacks the columns {sorted(need - set(table.columns))}")
    base = table.loc[table.method == "base", "loss"]
    if base.empty:
        raise ValueError("hypernet/validation.csv has no 'base' rows to compare with")
    ref = base.mean()
    order = {m: i for i, m in enumerate(dict.fromkeys(table.method))}
    mean = table.groupby(["method", "epsilon"])["loss"].mean().reset_index()
    mean = mean.sort_values(["epsilon"]).sort_values("method", key=lambda c: c.map(order), kind="stable")
    out = ["", f"Public validation of the hypernetwork (hypernet/validation.csv; "
               f"{table.proxy.nunique()} public proxy sets; mean denoising loss, lower is better; "
               "change relative to the base model)", "",
           "| method | epsilon | loss | vs base |", "|---|---|---|---|"]
    for r in mean.itertuples():
        out.append(f"| {r.method} | {_eps(r.epsilon)} | {r.loss:.5f} | {100 * (r.loss / ref - 1):+.2f} % |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--log", default=None, help="also write the tables here (with the header)")
    args = p.parse_args(argv)
    res = Path(args.results)
    for f in ("summary.csv", "metrics.csv"):
        if not (res / f).is_file():
            sys.exit(f"error: {res / f} does not exist; run the pipeline (make run) first")
    lines = log_header(__file__, argv) + tables(pd.read_csv(res / "summary.csv"),
                                                pd.read_csv(res / "metrics.csv"))
    if (res / "hypernet" / "validation.csv").is_file():
        try:
            lines += validation(pd.read_csv(res / "hypernet" / "validation.csv"))
        except ValueError as err:  # a malformed CSV: say which file, not a traceback
            sys.exit(f"error: {res / 'hypernet' / 'validation.csv'}: {err}")
    print_log(lines, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
