#!/usr/bin/env python
"""The DP-SGD audit's Poisson rows over repeated independent draws: the real code against the ideal.

    python benchmarks/audit_draws.py [--draws 16] [--canaries 2000] [--runs 25]
        [--log benchmarks/results/audit_draws.log]

``benchmarks/privacy_audit.py`` prints ONE draw per row. With Poisson sampling (q = 0.25,
T = 20, PRV accountant) its lower bounds for the correct code sat above the bound of the
exactly accounted mechanism under the same audit (``ideal_scores``, seed 0) in every row.
This script repeats each row with ``--draws`` independent draws (canary coins, keyed noise
and diffusion draws all change with the draw index) for the real code
(:func:`dpdeepsets.privacy_audit.dpsgd.audit_dpsgd`) and for the ideal mechanism, and
prints both distributions of the lower bound, a two-sided Mann-Whitney test of
"same distribution", and a sharper check than the bound: the pooled mean and standard
deviation of the included and excluded canaries' scores, real against ideal, with the
z-score of the difference of means (each score is the likelihood-ratio statistic the audit
ranks by, so a sampler, a canary or a noise scale that behaves unlike the accountant's
model moves these moments long before it moves the bound).

~8 s per real draw per row on the 2-core machine (4 rows).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy.stats import mannwhitneyu

from dpdeepsets.privacy_audit import dpsgd as D
from dpdeepsets.privacy_audit import stats as S

from _header import log_header, write_log  # benchmarks/_header.py: command, commit, date; atomic log

ROWS = [(1.0, "correct"), (1.0, "noise multiplier halved"), (4.0, "correct"),
        (4.0, "noise multiplier halved")]


def _moments(scores: np.ndarray, included: np.ndarray) -> tuple[float, float, float, float, int, int]:
    si, so = scores[included], scores[~included]
    return si.mean(), si.std(), so.mean(), so.std(), len(si), len(so)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=16, help="independent draws per row; default: %(default)s")
    p.add_argument("--first-draw", type=int, default=0,
                   help="index of the first draw (a second run with other draws); default: %(default)s")
    p.add_argument("--rows", nargs="+", type=int, choices=range(len(ROWS)), default=list(range(len(ROWS))),
                   help=f"which rows to run: {', '.join(f'{i} = eps {e:g} {c}' for i, (e, c) in enumerate(ROWS))}")
    p.add_argument("--canaries", type=int, default=2000, help="canaries per run; default: %(default)s")
    p.add_argument("--runs", type=int, default=25, help="runs pooled per draw; default: %(default)s")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--log", default="benchmarks/results/audit_draws.log")
    args = p.parse_args(argv)
    lines: list[str] = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    for line in log_header(__file__, argv):
        out(line)
    out(f"Poisson q=0.25, T=20, linear workload, "
        f"{args.canaries} canaries x {args.runs} runs per draw, draws {args.first_draw}.."
        f"{args.first_draw + args.draws - 1} per row, "
        f"delta={args.delta}, alpha={args.alpha}")
    out("lower bound: mean [min, median, max] over draws; MW p: Mann-Whitney two-sided, real vs ideal bounds")
    out("scores: pooled over draws, mean (sd) of included / excluded canaries; z: (real - ideal) / s.e.")
    out()
    head = (f"{'eps':>4} | {'code':<24} | {'z used':>6} | {'real bound':<28} | {'ideal bound':<28} | "
            f"{'MW p':>5} | {'real in':>15} | {'ideal in':>15} | {'z in':>5} | {'real out':>15} | "
            f"{'ideal out':>15} | {'z out':>5}")
    out(head)
    out("-" * len(head))
    t0 = time.perf_counter()
    hooks = {"correct": None, **D.PLANTED_DPSGD_BUGS}
    for eps, code in [ROWS[i] for i in args.rows]:
        real_b, ideal_b, real_s, ideal_s = [], [], [], []
        total = args.canaries * args.runs
        for draw in range(args.first_draw, args.first_draw + args.draws):
            r = D.audit_dpsgd(eps, args.delta, steps=20, sample_rate=0.25, canaries=args.canaries,
                              runs=args.runs, plan_hook=hooks[code], seed=draw, alpha=args.alpha,
                              return_scores=True)
            real_b.append(r["epsilon_lower_bound"])
            real_s.append((r["scores"], r["included"]))
            sc, inc = D.ideal_scores(r["noise_multiplier_used"], r["sample_rate"], r["steps"], total,
                                     claimed_noise_multiplier=r["noise_multiplier"], seed=draw)
            ideal_b.append(S.one_run_audit(sc, inc, args.delta, args.alpha)["epsilon_lower_bound"])
            ideal_s.append((sc, inc))
        rm = _moments(np.concatenate([s for s, _ in real_s]), np.concatenate([i for _, i in real_s]))
        im = _moments(np.concatenate([s for s, _ in ideal_s]), np.concatenate([i for _, i in ideal_s]))
        z_in = (rm[0] - im[0]) / np.sqrt(rm[1] ** 2 / rm[4] + im[1] ** 2 / im[4])
        z_out = (rm[2] - im[2]) / np.sqrt(rm[3] ** 2 / rm[5] + im[3] ** 2 / im[5])
        mw = mannwhitneyu(real_b, ideal_b, alternative="two-sided").pvalue

        def dist(b):
            return (f"{np.mean(b):.3f} [{np.min(b):.3f}, {np.median(b):.3f}, {np.max(b):.3f}]")

        out(f"{eps:>4g} | {code:<24} | {r['noise_multiplier_used']:>6.3g} | {dist(real_b):<28} | "
            f"{dist(ideal_b):<28} | {mw:>5.2f} | {rm[0]:>7.4f} ({rm[1]:.3f}) | {im[0]:>7.4f} ({im[1]:.3f}) | "
            f"{z_in:>5.2f} | {rm[2]:>7.4f} ({rm[3]:.3f}) | {im[2]:>7.4f} ({im[3]:.3f}) | {z_out:>5.2f}")
        out(f"     real bounds:  {' '.join(f'{b:.3f}' for b in real_b)}")
        out(f"     ideal bounds: {' '.join(f'{b:.3f}' for b in ideal_b)}")
    out()
    out(f"runtime {time.perf_counter() - t0:.0f} s")
    log = write_log(args.log, lines)
    print(f"wrote {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
