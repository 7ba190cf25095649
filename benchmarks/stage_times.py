#!/usr/bin/env python
"""Per-stage wall time and peak memory of the last run, from Snakemake's benchmark files.

    python benchmarks/stage_times.py [results_dir]

Each rule writes a benchmark TSV (seconds, max RSS, ...); jobs of the same rule (shards,
cells) are summed. ``total job seconds`` is the sum over jobs; the wall-clock span is
printed separately (jobs overlap with --cores > 1).
"""

import re
import sys
from pathlib import Path

import pandas as pd

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def main(results: str = "results") -> None:
    root = Path(results) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        sys.exit(f"no benchmark files under {root}: run the pipeline first")
    rows = []
    for f in files:
        rel = f.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rule = re.sub(r"_(public|private|validation|\d+)$", "", rule)  # embed_private, shard 3
        b = pd.read_csv(f, sep="\t").iloc[-1]
        rows.append({"rule": rule, "s": float(b["s"]), "max_rss_mb": float(b["max_rss"]),
                     "mtime": f.stat().st_mtime})
    df = pd.DataFrame(rows)
    span = df["mtime"].max() - (df["mtime"] - df["s"]).min()
    table = df.groupby("rule").agg(jobs=("s", "size"), seconds=("s", "sum"),
                                   max_job_s=("s", "max"), peak_rss_mb=("max_rss_mb", "max"))
    table = table.sort_values("seconds", ascending=False)
    table["share"] = (table["seconds"] / table["seconds"].sum()).map("{:.1%}".format)
    pd.set_option("display.width", 120)
    print_log_header(__file__)
    print(table.round(1).to_string())
    print(f"\ntotal job seconds {table['seconds'].sum():.0f}; wall-clock span of the run "
          f"{span:.0f} s ({span / 60:.1f} min); peak RSS of any job {df['max_rss_mb'].max():.0f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:])
