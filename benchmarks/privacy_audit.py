#!/usr/bin/env python
"""Empirical privacy audit of the DP release at every epsilon of a config's grid.

    python benchmarks/privacy_audit.py [--configfile config/config.yaml] [--trials 200000]

For each configured epsilon, runs ``dpdeepsets.audit.audit_release`` (worst-case neighbouring
sets, optimal threshold test, Clopper-Pearson bounds; see that module) twice: on the
mechanism as calibrated, where the lower bound must stay <= the claimed epsilon, and on a
deliberately mis-calibrated copy with sigma halved, which the audit should catch
(lower bound > claimed epsilon) wherever the trial count allows.  Also checks, with real
``release_clipped_mean`` calls, that the release adds noise of the ledger's sigma.
Exit status 1 if the calibrated mechanism fails either check.  Pure numpy/scipy; seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from dpdeepsets import audit
from dpdeepsets.config import load_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml",
                   help="pipeline config (privacy.epsilons, delta, clip_norm, adjacency, "
                        "subsets.set_size, embedder.dim); default: %(default)s")
    p.add_argument("--trials", type=int, default=200_000,
                   help="mechanism runs per dataset and epsilon (half choose the threshold, "
                        "half evaluate it); default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the audit; default: %(default)s")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="1 - confidence of the lower bound; default: %(default)s")
    p.add_argument("--releases", type=int, default=300,
                   help="real release_clipped_mean calls for the noise check; default: %(default)s")
    args = p.parse_args(argv)
    if args.trials < 100_000:
        p.error(f"--trials must be >= 100000, got {args.trials}")

    cfg = load_config(args.configfile)
    pr = cfg["privacy"]
    n, dim = cfg["subsets"]["set_size"], cfg["embedder"]["dim"]
    eps_grid = [float(e) for e in pr["epsilons"] if math.isfinite(float(e))]
    common = dict(delta=pr["delta"], n=n, clip_norm=pr["clip_norm"], adjacency=pr["adjacency"])
    print(f"config {args.configfile}: n={n}, d={dim}, C={pr['clip_norm']}, delta={pr['delta']}, "
          f"adjacency={pr['adjacency']}; {args.trials} trials per dataset "
          f"({args.trials - args.trials // 2} evaluate the threshold), alpha={args.alpha}")
    t0 = time.perf_counter()
    ok = True
    for scale, title in ((1.0, "as calibrated (must hold: lower bound <= claimed)"),
                         (0.5, "sigma halved, deliberately mis-calibrated (should be caught)")):
        print(f"\n{title}")
        print(f"{'eps claimed':>11} | {'sigma':>9} | {'eps lower bound':>15} | {'ceiling':>7} | "
              f"{'FPR':>8} | {'FNR':>8} | {'OK' if scale == 1.0 else 'caught'}")
        for i, eps in enumerate(eps_grid):
            r = audit.audit_release(eps, trials=args.trials, seed=args.seed + i, sigma_scale=scale,
                                    alpha=args.alpha, dim=dim, **common)
            if scale == 1.0:
                verdict = "OK" if not r["caught"] else "VIOLATED"
                ok &= not r["caught"]
            elif r["caught"]:
                verdict = "caught"
            else:
                verdict = ("not caught (claim above the audit's ceiling)" if eps >= r["epsilon_ceiling"]
                           else "not caught")
            print(f"{eps:>11g} | {r['sigma']:>9.5f} | {r['epsilon_lower_bound']:>15.3f} | "
                  f"{r['epsilon_ceiling']:>7.2f} | {r['fpr']:>8.2e} | {r['fnr']:>8.2e} | {verdict}")
    print(f"\nreal release noise vs ledger sigma ({args.releases} release_clipped_mean calls each)")
    print(f"{'eps claimed':>11} | {'sigma ledger':>12} | {'sigma empirical':>15} | OK")
    for i, eps in enumerate(eps_grid):
        r = audit.check_release_noise(eps, releases=args.releases, seed=args.seed + 1000 * (i + 1),
                                      dim=dim, **common)
        ok &= r["ok"]
        print(f"{eps:>11g} | {r['sigma_ledger']:>12.5f} | {r['sigma_empirical']:>15.5f} | "
              f"{'OK' if r['ok'] else 'MISMATCH'}")
    print(f"\n{time.perf_counter() - t0:.1f} s; calibrated mechanism {'passes' if ok else 'FAILS'} the audit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
