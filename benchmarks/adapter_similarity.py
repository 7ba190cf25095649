#!/usr/bin/env python
"""Are the DP-SGD adapters of different private sets different models?

    python benchmarks/adapter_similarity.py [results_dir] [--methods dpsgd public_ft_dpsgd pda_dpmd]

For every method with adapters under ``results/adapters/<method>/<set>/eps<e>_seed<s>`` this
prints, per epsilon, the mean pairwise cosine similarity between the flattened LoRA B factors
of different private sets (same seed), and their mean norm. For methods that start from the
public LoRA (``public_ft_dpsgd``, ``pda_dpmd``) the shared start makes raw B factors similar
whatever the data, so the cosine of the private update (B - B_public) is printed too. The
target of the comparison issue: mean pairwise cosine < 0.9 (the old code gave >= 0.99997:
the same model for every set and epsilon). Reads only published adapters.
"""

import argparse
import itertools
import re
from pathlib import Path

import numpy as np

from _header import print_log_header  # benchmarks/_header.py: command, commit, date

CELL = re.compile(r"eps(?P<eps>[0-9.]+)_seed(?P<seed>\d+)$")


def flat_b(path: Path) -> np.ndarray:
    from dpdeepsets.lora import load_adapter_factors

    _, b = load_adapter_factors(path)
    return np.concatenate([b[k].double().numpy().ravel() for k in sorted(b)])


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else float("nan")


def table(results: Path, methods: list[str]) -> list[dict]:
    public = results / "adapters" / "public_pool_lora"
    b_pub = flat_b(public) if (public / "adapter_model.safetensors").is_file() else None
    rows = []
    for method in methods:
        cells: dict[tuple[float, int], dict[str, np.ndarray]] = {}
        for d in sorted((results / "adapters" / method).glob("*/eps*_seed*")):
            m = CELL.match(d.name)
            if m is None or not (d / "adapter_model.safetensors").is_file():
                continue
            cells.setdefault((float(m["eps"]), int(m["seed"])), {})[d.parent.name] = flat_b(d)
        for (eps, seed), by_set in sorted(cells.items()):
            if len(by_set) < 2:
                continue
            pairs = list(itertools.combinations(sorted(by_set), 2))
            row = {"method": method, "epsilon": eps, "seed": seed, "sets": len(by_set),
                   "cos_B": np.mean([cosine(by_set[i], by_set[j]) for i, j in pairs]),
                   "norm_B": np.mean([np.linalg.norm(v) for v in by_set.values()])}
            if b_pub is not None and method in ("public_ft_dpsgd", "pda_dpmd"):
                row["cos_update"] = np.mean([cosine(by_set[i] - b_pub, by_set[j] - b_pub)
                                             for i, j in pairs])
            rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--methods", nargs="+", default=["dpsgd", "public_ft_dpsgd", "pda_dpmd"])
    args = p.parse_args()
    print_log_header(__file__)
    import pandas as pd

    rows = table(Path(args.results), args.methods)
    if not rows:
        raise SystemExit(f"no DP-SGD adapters of two or more sets under {args.results}/adapters")
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    worst = df.groupby("method").cos_B.max()
    print("\nlargest mean pairwise cosine of B per method (target < 0.9):")
    print(worst.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
