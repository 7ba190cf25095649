#!/usr/bin/env python
"""How wide the comparison's interval is for each (private sets, samples per cell), per CPU-minute.

    python benchmarks/interval_budget.py RESULTS [--methods dpsgd nearest_public_lora ...]
        [--samples 32 64 128] [--sets 3 4 8 12 16] [--log benchmarks/results/interval_budget.log]

Reads a finished run (RESULTS: its results directory, sampled with at least max(--samples)
samples per cell, e.g. results/study): every cell's Inception features, the private sets'
features (eval/private_sets.npz, evaluation only) and the jobs' benchmark TSVs.

For m samples per cell it recomputes each cell's FID against its own set from the cell's first
m samples (the samples are exchangeable), forms the paired margin (method - DP-DeepSets, the
summary's statistic) per set, and takes its standard deviation over the run's disjoint sets,
s_m. The 95 % Student-t half-width with P sets is t(P-1) * s_m / sqrt(P) (s_m measured at the
run's P; assumed to hold at other P, which is what "the sets are exchangeable units" means).

Cost per set: the job-seconds of the run's per-set jobs (fits, private evolution, sampling) /
P, with the sampling jobs' seconds scaled from the run's samples to m (sampling and Inception
are linear in m), plus the run's fixed job-seconds (public side, scoring). The table prints
the half-width beside the CPU-minutes of the default-sized run at each (P, m), so a reader can
pick the pair that buys the narrowest interval per CPU-minute.
"""

from __future__ import annotations

import argparse
import glob
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from dpdeepsets import scores, tables

from _header import log_header, write_log  # benchmarks/_header.py: command, commit, date; atomic log

PER_SET_RULES = ("fit_baseline", "fit_nonprivate", "private_evolution", "sample", "sample_reference",
                 "generate_lora", "generate_lora_reference", "release_embedding", "release_reference")
SAMPLING_RULES = ("sample", "sample_reference", "private_evolution")


def margins(results: Path, methods: list[str], m: int) -> pd.DataFrame:
    """Paired FID margins (method - dpdeepsets) per (method, epsilon, set), from the first m
    samples of every cell (seeds averaged within a set)."""
    priv = np.load(results / "eval" / "private_sets.npz")
    rows = []
    for method in ["dpdeepsets", *methods]:
        for path in sorted(glob.glob(str(results / "features" / method / "p*" / "eps*_seed*.npz"))):
            cell = tables.parse_cell(path)
            if not math.isfinite(cell["epsilon"]):
                continue
            feats = np.load(path)["features"]
            if len(feats) < m:
                raise SystemExit(f"{path} has {len(feats)} samples < {m}: rerun with fewer --samples")
            rows.append({"method": method, "epsilon": cell["epsilon"], "pset": cell["pset"],
                         "seed": cell["seed"],
                         "fid": scores.fid_from_features(feats[:m], priv[f"features_{cell['pset']}"])})
    df = pd.DataFrame(rows).groupby(["method", "epsilon", "pset"])["fid"].mean().reset_index()
    ours = df[df.method == "dpdeepsets"].set_index(["epsilon", "pset"])["fid"]
    out = df[df.method != "dpdeepsets"].copy()
    out["margin"] = [r.fid - ours.loc[(r.epsilon, r.pset)] for r in out.itertuples()]
    return out


def costs(results: Path, n_sets: int, run_samples: int) -> tuple[float, float, float]:
    """(fixed job-s, per-set job-s outside sampling, per-set sampling job-s at run_samples)."""
    fixed = per_set = sampling = 0.0
    for tsv in glob.glob(str(results / "benchmarks" / "**" / "*.tsv"), recursive=True):
        rule = Path(tsv).parent.name if Path(tsv).parent != results / "benchmarks" else Path(tsv).stem
        s = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        if rule in SAMPLING_RULES:
            sampling += s
        elif rule in PER_SET_RULES:
            per_set += s
        else:
            fixed += s
    return fixed, per_set / n_sets, sampling / n_sets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--methods", nargs="+", default=["nearest_public_lora", "dpsgd", "private_evolution"])
    p.add_argument("--samples", nargs="+", type=int, default=[32, 64, 128])
    p.add_argument("--sets", nargs="+", type=int, default=[3, 4, 8, 12, 16])
    p.add_argument("--log", default="benchmarks/results/interval_budget.log")
    args = p.parse_args(argv)
    lines = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    for line in log_header(__file__, argv):
        out(line)
    out(f"results {args.results}")
    sets = np.load(args.results / "subsets" / "private.npz")["members"]
    n_sets = len(sets)
    run_samples = len(np.load(next(iter(glob.glob(str(args.results / "features" / "dpdeepsets" / "p0" / "*.npz")))))["features"])
    fixed, per_set, sampling = costs(args.results, n_sets, run_samples)
    out(f"run: {n_sets} disjoint sets, {run_samples} samples per cell; job-seconds fixed {fixed:.0f}, "
        f"per set {per_set:.0f} + sampling {sampling:.0f} (at {run_samples} samples)")
    out()
    sd = {}
    for m in args.samples:
        mg = margins(args.results, args.methods, m)
        for (method, eps), g in mg.groupby(["method", "epsilon"]):
            sd[(method, eps, m)] = float(g["margin"].std(ddof=1))
    out("standard deviation over sets of the paired FID margin (method - DP-DeepSets), by samples per cell")
    out(f"{'method':<22} {'eps':>6} " + " ".join(f"{f'm={m}':>8}" for m in args.samples))
    for method in args.methods:
        for eps in sorted({k[1] for k in sd if k[0] == method}):
            out(f"{method:<22} {eps:>6g} " + " ".join(f"{sd[(method, eps, m)]:>8.2f}" for m in args.samples))
    out()
    typical = {m: float(np.median([v for (mm, _, mmm), v in sd.items() if mmm == m])) for m in args.samples}
    out("95 % t half-width of the mean margin (median s_m over methods and epsilons) and CPU-minutes of the run")
    out(f"{'sets':>5} {'samples':>8} {'half-width':>11} {'CPU-min':>8} {'half-width x sqrt(CPU-min)':>27}")
    for n in args.sets:
        for m in args.samples:
            hw = student_t.ppf(0.975, n - 1) * typical[m] / math.sqrt(n)
            cpu = (fixed + n * (per_set + sampling * m / run_samples)) / 60
            out(f"{n:>5} {m:>8} {hw:>11.2f} {cpu:>8.0f} {hw * math.sqrt(cpu):>27.1f}")
    out()
    out("lower half-width x sqrt(CPU-min) = more precision per CPU-minute (it is constant when only "
        "sets are added and the fixed cost is negligible)")
    log = write_log(args.log, lines)
    print(f"wrote {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
