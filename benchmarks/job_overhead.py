#!/usr/bin/env python
"""What every Snakemake job pays before it computes: interpreter start + the stage's imports.

    python benchmarks/job_overhead.py [--repeats 3] [results_dir]

For each stage script, a fresh interpreter imports exactly what the script imports before
its work starts (torch, diffusers, peft, opacus, clean-fid ...); the median wall time of
``--repeats`` runs is printed next to a bare ``python -c pass``.  When the run's benchmark
files exist (``results/benchmarks``), it also prints each stage's mean job time and the share
of it that is start-up: the reason a DP method's epsilon grid runs as one job (README,
"Configuration").  Run it on an idle machine; start-up times drift with load.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

# The imports each stage script makes before computing (see workflow/scripts/*.py).
STAGES = {
    "sample": "from dpdeepsets import diffusion, lora; import peft; "
              "from dpdeepsets.data import save_split; from dpdeepsets.report import save_image_grid",
    "evaluate": "import numpy; from dpdeepsets.data import load_split; "
                "from dpdeepsets.metrics import InceptionFeatures, fid_from_features",
    "fit_baseline": "import numpy; from dpdeepsets import data, diffusion, dpsgd, lora; import opacus",
    "generate_lora": "import torch; from dpdeepsets import hypernet, lora; import peft",
    "release_embedding": "import numpy; from dpdeepsets import privacy",
}


def wall(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mean_job_seconds(results: Path) -> dict:
    root = results / "benchmarks"
    out = {}
    for stage in STAGES:
        files = sorted((root / stage).glob("*.tsv"))
        if files:
            out[stage] = statistics.mean(float(pd.read_csv(f, sep="\t").iloc[-1]["s"]) for f in files)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    bare = wall("pass", args.repeats)
    jobs = mean_job_seconds(Path(args.results))
    print(f"{'stage':18s} {'start-up s':>10s} {'x bare python':>13s} {'mean job s':>10s} {'start-up share':>14s}")
    print(f"{'(python -c pass)':18s} {bare:10.2f} {1.0:13.1f}")
    for stage, code in STAGES.items():
        t = wall(code, args.repeats)
        job = jobs.get(stage)
        share = f"{t / job:14.0%}" if job else f"{'-':>14s}"
        job_s = f"{job:10.1f}" if job else f"{'-':>10s}"
        print(f"{stage:18s} {t:10.2f} {t / bare:13.1f} {job_s} {share}")
    if jobs:
        print(f"\nmean job times from {args.results}/benchmarks (a stage's directory also holds its "
              "reference rule's jobs: sample_reference, evaluate_reference, fit_nonprivate)")


if __name__ == "__main__":
    main()
