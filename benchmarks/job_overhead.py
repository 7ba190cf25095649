#!/usr/bin/env python
"""What the jobs of a run paid before they computed: the start-up share of all job-seconds.

    python benchmarks/job_overhead.py [results_dir]

Every stage script records, beside its log, the seconds from its process's start to the
first data file it opened (``startup_s`` in ``<log>.access.json``, dpdeepsets.access):
interpreter start, the stage's imports (torch, diffusers, opacus, onnxruntime ...) and
argument parsing, measured in the run itself. This prints, per rule, the jobs, their summed
job-seconds (Snakemake's benchmark files), their summed start-up and its share, and the
run's total: the number the speed target is about (start-up share of all job-seconds).
Jobs that are not stage scripts (``python -m`` tools: noise_key, inception_onnx) have no
record and are counted as start-up entirely (an upper bound).
"""

import json
import sys
from pathlib import Path

import pandas as pd

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def job_table(results: Path) -> pd.DataFrame:
    """One row per job: rule, job seconds (benchmark), start-up seconds (access record)."""
    rows = []
    bench = results / "benchmarks"
    for f in sorted(bench.rglob("*.tsv")):
        rel = f.relative_to(bench)
        log = results / "logs" / rel.with_suffix(".log")
        record = log.with_name(log.name + ".access.json")
        s = float(pd.read_csv(f, sep="\t").iloc[-1]["s"])
        startup = None
        if record.exists():
            startup = json.loads(record.read_text()).get("startup_s")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rows.append({"job": str(rel.with_suffix("")), "rule": rule, "s": s,
                     "startup_s": s if startup is None else min(float(startup), s),
                     "recorded": startup is not None})
    return pd.DataFrame(rows)


def main(results: str = "results") -> None:
    df = job_table(Path(results))
    if df.empty:
        sys.exit(f"no benchmark files under {results}/benchmarks: run the pipeline first")
    # a rule's benchmark files are named after the rule, or sit in a directory of its name
    df["rule"] = df["rule"].str.replace(r"_(public|private|validation|\d+)$", "", regex=True)
    table = df.groupby("rule").agg(jobs=("s", "size"), job_s=("s", "sum"),
                                   startup_s=("startup_s", "sum"), recorded=("recorded", "all"))
    table["startup_share"] = (table.startup_s / table.job_s).map("{:.0%}".format)
    pd.set_option("display.width", 120)
    print_log_header(__file__)
    print(table.sort_values("job_s", ascending=False).round(1).to_string())
    total, startup = df.s.sum(), df.startup_s.sum()
    print(f"\n{len(df)} jobs, {total:.0f} job-seconds, of which start-up {startup:.0f} s: "
          f"start-up share {startup / total:.1%} (mean {df.startup_s.mean():.1f} s per job)")


if __name__ == "__main__":
    main(*sys.argv[1:])
