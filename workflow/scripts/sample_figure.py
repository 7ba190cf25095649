#!/usr/bin/env python
"""sample_figure: the paper's Fig. 1 (one row per private set, one column per method at one
epsilon) and DP-DeepSets across the epsilon grid.

Reads only sample files (post-processing of DP releases and DP-SGD fits, and public-only
samples): the figures are released artifacts and must not touch private data or evaluation
outputs. Non-private cells (epsilon = inf) and methods the registry keeps out of figures are
refused.
"""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import setup_logging


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", nargs="+", required=True, help="sample .npz files")
    p.add_argument("--epsilon", required=True, help="epsilon of the method-comparison figure")
    p.add_argument("--out", required=True, help="method-comparison figure .png")
    p.add_argument("--out-sweep", required=True, help="DP-DeepSets-vs-epsilon figure .png")
    args = p.parse_args()
    log = setup_logging("sample_figure")
    import math

    from dpdeepsets import methods as M
    from dpdeepsets.data import load_split
    from dpdeepsets.figures import sample_figure
    from dpdeepsets.io import parse_epsilon
    from dpdeepsets.tables import parse_cell

    cells = []
    for path in args.samples:
        cell = {**parse_cell(path), "path": path}
        if math.isinf(cell["epsilon"]) or not M.get(cell["method"]).in_figure:
            raise ValueError(f"{path}: a non-private cell cannot go into a released figure")
        cells.append(cell)
    seed0 = min(c["seed"] for c in cells)
    cells = [c for c in cells if c["seed"] == seed0]
    psets = sorted({c["pset"] for c in cells if c["pset"] != "all"})
    if not psets:
        raise ValueError("no private-set samples among --samples")
    rank = {m: i for i, m in enumerate(M.REGISTRY)}
    public = [(M.get(c["method"]).label, load_split(c["path"])[0])
              for c in sorted((c for c in cells if c["pset"] == "all"), key=lambda c: rank[c["method"]])]
    fig_eps = parse_epsilon(args.epsilon)
    base = M.get("base").label

    def rows_for(select, label, with_public):
        rows = []
        for pset in psets:
            mine = sorted((c for c in cells if c["pset"] == pset and select(c)),
                          key=lambda c: (rank[c["method"]], c["epsilon"]))
            rows.append((pset, (public if with_public else [x for x in public if x[0] == base])
                         + [(label(c), load_split(c["path"])[0]) for c in mine]))
        return rows

    methods = rows_for(lambda c: c["epsilon"] == fig_eps, lambda c: M.get(c["method"]).label, True)
    sample_figure(args.out, methods, title=f"epsilon = {args.epsilon}, seed {seed0}")
    sweep = rows_for(lambda c: c["method"] == "dpdeepsets", lambda c: f"eps={c['eps']}", False)
    sample_figure(args.out_sweep, sweep, title=f"DP-DeepSets across epsilon, seed {seed0}")
    log.info("wrote %s (%d sets x %d columns) and %s (%d columns), seed %d", args.out, len(methods),
             len(methods[0][1]), args.out_sweep, len(sweep[0][1]), seed0)


if __name__ == "__main__":
    cli.run(main)
