#!/usr/bin/env python
"""How long calibrating one DP-SGD fit takes, per epsilon and accountant (dpdeepsets.privacy).

    python benchmarks/accountant_time.py [--configfile config/paper.yaml] [--timeout 60]

For every epsilon of the config's grid it times ``privacy.dpsgd_noise_multiplier`` with each
accountant that applies, for the config's own regime (baselines.batch_size / subsets.set_size
and baselines.steps; full batch: gdp) and for a subsampled regime (sample rate 0.25, the same
steps), each call in a subprocess killed after ``--timeout`` seconds, and prints which one
``accountant: auto`` picks. The point: every epsilon of the paper's 2^-2 .. 2^10 grid must
calibrate in bounded time (opacus' PRV did not return within 60 s at epsilon 1024).
"""

import argparse
import subprocess
import sys
import time

from _header import print_log_header  # benchmarks/_header.py: command, commit, date

CODE = ("import sys; from dpdeepsets import privacy as P; "
        "print(P.dpsgd_noise_multiplier(float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), "
        "int(sys.argv[4]), sys.argv[5]))")


def timed(eps, delta, q, steps, accountant, timeout):
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", CODE, str(eps), str(delta), str(q), str(steps),
                              accountant], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"> {timeout} s (killed)"
    wall = time.perf_counter() - t
    if out.returncode:
        return None, "error: " + out.stderr.strip().splitlines()[-1][:60]
    return float(out.stdout.strip()), f"{wall:6.1f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/paper.yaml")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    print_log_header(__file__)
    import yaml

    from dpdeepsets import privacy as P

    cfg = yaml.safe_load(open(args.configfile))
    b, delta = cfg["baselines"], cfg["privacy"]["delta"]
    n = cfg["subsets"]["set_size"]
    steps = b.get("steps", 20)
    q_cfg = min(1.0, b.get("batch_size", 128) / n)
    pmax = b.get("prv_max_epsilon", 64)
    print(f"{args.configfile}: delta {delta:g}, {steps} steps; times include a fresh interpreter "
          f"(~1-2 s); the ledger records the accountant of every fit")
    print(f"{'regime':>14s} {'epsilon':>8s} {'auto':>5s} " + " ".join(f"{a:>22s}" for a in P.DPSGD_ACCOUNTANTS))
    for q in sorted({q_cfg, 0.25}, reverse=True):
        for eps in cfg["privacy"]["epsilons"]:
            auto = P.resolve_accountant("auto", eps, q, pmax)
            cells = []
            for acc in P.DPSGD_ACCOUNTANTS:
                if acc == "gdp" and q != 1.0:
                    cells.append(f"{'n/a':>22s}")
                    continue
                z, t = timed(eps, delta, q, steps, acc, args.timeout)
                cells.append(f"{(f'z={z:.4g}' if z else ''):>10s} {t:>11s}")
            print(f"{f'q={q:g}':>14s} {eps:8g} {auto:>5s} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
