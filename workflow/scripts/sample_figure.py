#!/usr/bin/env python
"""sample_figure: one row per private set, one column per method/epsilon (the paper's Fig. 1).

Reads only sample files (post-processing of DP releases, plus the base model's samples):
the figure is a released artifact and must not touch private data or evaluation outputs.
"""

import argparse
import re

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

PATTERN = re.compile(r"samples/(?P<method>[a-z_]+)/(?P<pset>p\d+|all)/eps(?P<eps>[^_/]+)_seed(?P<seed>\d+)\.npz$")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", nargs="+", required=True, help="sample .npz files")
    p.add_argument("--out", required=True, help="figure .png")
    args = p.parse_args()
    log = setup_logging("sample_figure")
    from dpdeepsets.data import load_split
    from dpdeepsets.io import parse_epsilon
    from dpdeepsets.report import sample_figure

    cells = []
    for path in args.samples:
        m = PATTERN.search(path)
        if m is None:
            raise ValueError(f"not a sample path of this pipeline: {path}")
        cells.append({**m.groupdict(), "path": path})
    seed0 = min(int(c["seed"]) for c in cells)
    cells = [c for c in cells if int(c["seed"]) == seed0]
    psets = sorted({c["pset"] for c in cells if c["pset"] != "all"})
    base = [c for c in cells if c["method"] == "base"]
    rows = []
    for pset in psets:
        mine = sorted((c for c in cells if c["pset"] == pset),
                      key=lambda c: (c["method"], parse_epsilon(c["eps"])))
        row = [("base (no LoRA)", load_split(base[0]["path"])[0])] if base else []
        row += [(f"{c['method']} eps={c['eps']}", load_split(c["path"])[0]) for c in mine]
        rows.append((pset, row))
    sample_figure(args.out, rows)
    log.info("wrote %s (%d sets x %d columns, seed %d)", args.out, len(rows), len(rows[0][1]), seed0)


if __name__ == "__main__":
    cli.run(main)
