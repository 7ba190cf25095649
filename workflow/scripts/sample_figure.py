#!/usr/bin/env python
"""sample_figure: the paper's Fig. 1 (one row per private set, one column per method at one
epsilon) and DP-DeepSets across the epsilon grid.

Reads only sample files (post-processing of DP releases and DP-SGD fits, plus the base
model's samples): the figures are released artifacts and must not touch private data or
evaluation outputs. Non-private cells (epsilon = inf) are refused.
"""

import argparse
import re

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

PATTERN = re.compile(r"samples/(?P<method>[a-z_]+)/(?P<pset>p\d+|all)/eps(?P<eps>[^_/]+)_seed(?P<seed>\d+)\.npz$")
METHOD_ORDER = ["dpdeepsets", "dpsgd", "public_ft_dpsgd", "pda_dpmd"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", nargs="+", required=True, help="sample .npz files")
    p.add_argument("--epsilon", required=True, help="epsilon of the method-comparison figure")
    p.add_argument("--out", required=True, help="method-comparison figure .png")
    p.add_argument("--out-sweep", required=True, help="DP-DeepSets-vs-epsilon figure .png")
    args = p.parse_args()
    log = setup_logging("sample_figure")
    import math

    from dpdeepsets.data import load_split
    from dpdeepsets.io import parse_epsilon
    from dpdeepsets.report import sample_figure

    cells = []
    for path in args.samples:
        m = PATTERN.search(path)
        if m is None:
            raise ValueError(f"not a sample path of this pipeline: {path}")
        cell = {**m.groupdict(), "path": path}
        cell["epsilon"] = parse_epsilon(cell["eps"])
        if cell["method"] != "base" and math.isinf(cell["epsilon"]):
            raise ValueError(f"{path}: a non-private cell cannot go into a released figure")
        cells.append(cell)
    seed0 = min(int(c["seed"]) for c in cells)
    cells = [c for c in cells if int(c["seed"]) == seed0]
    psets = sorted({c["pset"] for c in cells if c["pset"] != "all"})
    if not psets:
        raise ValueError("no private-set samples among --samples")
    base = [c for c in cells if c["method"] == "base"]
    base_cell = [("base (no LoRA)", load_split(base[0]["path"])[0])] if base else []
    fig_eps = parse_epsilon(args.epsilon)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}

    def rows_for(select, label):
        rows = []
        for pset in psets:
            mine = sorted((c for c in cells if c["pset"] == pset and select(c)),
                          key=lambda c: (rank.get(c["method"], len(rank)), c["method"], c["epsilon"]))
            row = base_cell + [(label(c), load_split(c["path"])[0]) for c in mine]
            rows.append((pset, row))
        return rows

    methods = rows_for(lambda c: c["method"] != "base" and c["epsilon"] == fig_eps, lambda c: c["method"])
    sample_figure(args.out, methods, title=f"epsilon = {args.epsilon}, seed {seed0}")
    sweep = rows_for(lambda c: c["method"] == "dpdeepsets", lambda c: f"eps={c['eps']}")
    sample_figure(args.out_sweep, sweep, title=f"DP-DeepSets across epsilon, seed {seed0}")
    log.info("wrote %s (%d sets x %d columns) and %s (%d columns), seed %d", args.out, len(methods),
             len(methods[0][1]), args.out_sweep, len(sweep[0][1]), seed0)


if __name__ == "__main__":
    cli.run(main)
