#!/usr/bin/env python
"""Empirical privacy audit of the release, the DP-SGD baseline and Private Evolution: one table.

    python benchmarks/privacy_audit.py [--configfile config/config.yaml] [--trials 20000]
        [--canaries 2000] [--runs 50] [--log benchmarks/results/privacy_audit.log]

Release (``dpdeepsets.privacy_audit.release``): the real ``release_clipped_mean``, called
once per trial with keyed noise, on worst-case neighbours of the config's n, d, C, delta:
replace_one (n vs n rows), add_remove with a row removed (n vs n - 1) and added (n + 1 vs n);
the config's epsilon grid up to 64, and 16, 64; the correct release and the planted bugs (sigma halved,
mean over the actual row count).  Above the audit's ceiling (epsilon >= 16) a quarter of the
trials is used: no number of trials this machine can afford reaches those claims.

DP-SGD (``dpdeepsets.privacy_audit.dpsgd``): the pipeline's DP step (Poisson sampler, opacus'
DPOptimizer with the keyed source's generators, the privacy module's noise multiplier) with
Dirac canaries, pooled over runs; full batches with the config's DP-SGD steps (exact GDP
accounting, as the default config), Poisson sampling at q = 0.25 (PRV accountant), and the
tiny LoRA-UNet; the correct plan and the noise multiplier halved after calibration.
"ideal" is the bound the same audit gets from the exactly accounted mechanism (simulated):
what this audit can certify at best with these canaries.

Private Evolution (``dpdeepsets.privacy_audit.pe``): the vote histogram's worst change on real
neighbouring datasets against the claimed sensitivity (and two planted histogram bugs), then
the black-box audit of the T noisy histograms at each epsilon of the grid with the config's
(tuned) T, under the three neighbour kinds, correct and with sigma halved.

Exit status 1 if a correct mechanism is caught or the noise check fails.  ~8-10 minutes
on the 2-core machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from dpdeepsets import privacy as P
from dpdeepsets import privacy_audit as A
from dpdeepsets.config import load_config

from _header import log_header, write_log  # benchmarks/_header.py: command, commit, date; atomic log

HEADER = (f"{'mechanism':<9} | {'setting':<48} | {'code':<30} | {'eps claimed':>11} | "
          f"{'accountant / calibration':<28} | {'lower bound':>11} | {'ideal':>5} | {'ceiling':>7} | verdict")


class Tee:
    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)


def _verdict(r, correct: bool) -> str:
    if correct:
        return "OK (not caught)" if not r["caught"] else "VIOLATED (caught!)"
    if r["caught"]:
        return "caught: yes"
    return "caught: no" + (" (claim above ceiling)" if r["epsilon_claimed"] >= r["epsilon_ceiling"] else "")


def _row(out, mech, setting, code, r, calib, ideal=None):
    ideal_s = f"{ideal:5.2f}" if ideal is not None else "    -"
    out(f"{mech:<9} | {setting:<48} | {code:<30} | {r['epsilon_claimed']:>11.4g} | {calib:<28} | "
        f"{r['epsilon_lower_bound']:>11.3f} | {ideal_s} | {r['epsilon_ceiling']:>7.2f} | "
        f"{_verdict(r, code == 'correct')}")


AUDIT_MAX_EPSILON = 64.0  # no trial or canary count this machine affords gets near larger claims


def audited(epsilons, at_most: float = AUDIT_MAX_EPSILON) -> list[float]:
    """The finite epsilons of ``epsilons`` up to ``at_most`` (the grid's 1024 is not audited: the
    bound cannot exceed the audit's ceiling of about 8; the noise check covers every epsilon)."""
    return sorted({float(e) for e in epsilons if math.isfinite(float(e)) and float(e) <= at_most})


def release_rows(out, cfg, args) -> bool:
    pr = cfg["privacy"]
    n, dim = cfg["subsets"]["set_size"], cfg["embedder"]["dim"]
    common = dict(delta=pr["delta"], n=n, clip_norm=pr["clip_norm"], dim=dim, alpha=args.alpha)
    grid = audited(list(pr["epsilons"]) + [16.0, 64.0])
    codes = {"correct": P.release_clipped_mean, **A.PLANTED_RELEASE_BUGS}
    ok, speeds = True, []
    for eps in sorted(set(grid)):
        trials = args.trials if eps < 16 else args.trials // 4
        for nb in A.NEIGHBOURS:
            adjacency = A.NEIGHBOUR_ADJACENCY[nb]
            rows = {"replace": "n vs n", "remove": "n vs n-1", "add": "n+1 vs n"}[nb]
            sens = "2C/n" if adjacency == "replace_one" else "C/n"
            for code, release in codes.items():
                if nb == "replace" and release is A.release_row_count_mean:
                    continue  # exactly n rows: the same statistic as the correct release
                r = A.audit_release(eps, neighbours=nb, trials=trials, release=release,
                                    seed=args.seed, **common)
                speeds.append(r["calls_per_second"])
                if code == "correct":
                    ok &= not r["caught"]
                _row(out, "release", f"{adjacency} ({rows}), {trials} trials", code, r,
                     f"analytic Gaussian, D={sens}")
    out(f"(release: {min(speeds):.0f}-{max(speeds):.0f} release_clipped_mean calls per second)")
    return ok


def dpsgd_rows(out, cfg, args) -> bool:
    from dpdeepsets.privacy_audit import dpsgd as D
    from dpdeepsets.privacy_audit import stats as S

    pr, bl = cfg["privacy"], cfg["baselines"]
    delta = pr["delta"]
    grid = audited(pr["epsilons"], 16.0)
    m, runs = args.canaries, args.runs
    unet = D.tiny_lora_unet_workload()
    settings = [(f"full batch, T={bl['steps']}, linear", dict(steps=int(bl["steps"]), sample_rate=1.0,
                                                             canaries=m, runs=runs), grid),
                ("q=0.25, T=20, linear", dict(steps=20, sample_rate=0.25, canaries=m,
                                              runs=max(1, runs // 2)), [1.0, 4.0]),
                ("full batch, T=1, tiny LoRA-UNet", dict(steps=1, sample_rate=1.0, canaries=10_000,
                                                         runs=2, workload=unet), [4.0])]
    ok = True
    for name, kw, eps_grid in settings:
        total = kw["canaries"] * kw["runs"]
        for eps in eps_grid:
            for code, hook in {"correct": None, **D.PLANTED_DPSGD_BUGS}.items():
                r = D.audit_dpsgd(eps, delta, plan_hook=hook, seed=args.seed, alpha=args.alpha, **kw)
                z = r["noise_multiplier"]
                ideal = S.one_run_audit(*D.ideal_scores(r["noise_multiplier_used"], r["sample_rate"],
                                                        r["steps"], total, claimed_noise_multiplier=z,
                                                        seed=args.seed), delta, args.alpha)
                if code == "correct":
                    ok &= not r["caught"]
                _row(out, "DP-SGD", f"{name}, {total} canaries", code, r,
                     f"{r['accountant']}, z={z:.3g}", ideal["epsilon_lower_bound"])
    out("(DP-SGD: one draw per row; real code and ideal differ from draw to draw. Over 16 "
        "independent draws of the Poisson rows their bounds agree (benchmarks/audit_draws.py, "
        "results/audit_draws.log, Mann-Whitney p 0.60-1.00): a gap in one row is noise)")
    return ok


def pe_rows(out, cfg, args) -> bool:
    """Private Evolution's release (dpdeepsets.privacy_audit.pe): the vote histogram's worst
    change on real neighbours against the claimed sensitivity, then the black-box audit of the
    T noisy histograms (the pipeline's noisy_histogram, sigma from pe_histogram_sigma) on
    worst-case neighbours, correct and with planted bugs, at the config's tuned T per epsilon."""
    import numpy as np

    from dpdeepsets import private_evolution as PE
    from dpdeepsets.privacy_audit import pe as APE

    pr, s = cfg["privacy"], cfg["sampling"]
    rng = np.random.default_rng(args.seed)
    private = rng.normal(size=(cfg["subsets"]["set_size"], 8))
    sets = APE.random_candidate_sets(private, seed=args.seed)
    ok = True
    for name, kw in {"correct": {}, **{b: v for b, v in APE.PLANTED_PE_BUGS.items() if "histogram" in v}}.items():
        r = APE.histogram_sensitivity_check(private, sets, seed=args.seed, **kw)
        if name == "correct":
            ok &= r["ok"]
        setting = f"real neighbours of n={len(private)}, {r['neighbours']} pairs"
        out(f"{'PE hist':<9} | {setting:<48} | "
            f"{name:<30} | worst L2 change {r['add_remove']:.3f} add/remove (claim 1), "
            f"{r['replace_one']:.3f} replace-one (claim 1.414), votes conserved: "
            f"{r['votes_conserved']} | {'OK' if r['ok'] else 'EXCEEDS the claim'}")
    for eps in audited(pr["epsilons"]):
        params, _ = PE.params_for(cfg["private_evolution"], eps, s["ddim_steps"], s["num_samples"])
        for neighbours in ("remove", "add", "replace"):
            for code, kw in {"correct": {}, "sigma halved": APE.PLANTED_PE_BUGS["sigma halved"]}.items():
                r = APE.audit_pe_release(eps, pr["delta"], iterations=params.iterations,
                                         trials=args.trials if eps < 16 else args.trials // 4,
                                         neighbours=neighbours, seed=args.seed, alpha=args.alpha, **kw)
                if code == "correct":
                    ok &= not r["caught"]
                _row(out, "PE", f"{r['adjacency']} ({neighbours}), T={params.iterations}, "
                               f"{r['trials']} trials", code, r,
                     f"gdp, sigma={r['sigma']:.3g} per histogram")
    return ok


def noise_rows(out, cfg, args) -> bool:
    pr = cfg["privacy"]
    n, dim = cfg["subsets"]["set_size"], cfg["embedder"]["dim"]
    ok = True
    out(f"{'release noise vs ledger sigma':<40} | {'eps':>6} | {'sigma ledger':>12} | {'sigma empirical':>15} | OK")
    for eps in [float(e) for e in pr["epsilons"] if math.isfinite(float(e))]:
        for adjacency in P.ADJACENCIES:
            for noise in ("keyed", "secure"):
                r = A.check_release_noise(eps, pr["delta"], n, pr["clip_norm"], adjacency,
                                          args.releases, noise=noise, seed=args.seed, dim=dim)
                ok &= r["ok"]
                out(f"{f'{adjacency}, {noise} noise, {args.releases} releases':<40} | {eps:>6g} | "
                    f"{r['sigma_ledger']:>12.5f} | {r['sigma_empirical']:>15.5f} | "
                    f"{'OK' if r['ok'] else 'MISMATCH'}")
    return ok


PARTS = ("release", "dpsgd", "pe", "noise")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml",
                   help="pipeline config (privacy.*, subsets.set_size, embedder.dim, baselines.steps); "
                        "default: %(default)s")
    p.add_argument("--trials", type=int, default=20_000,
                   help="release calls per neighbour and row (10%% choose the threshold); default: %(default)s")
    p.add_argument("--canaries", type=int, default=2_000, help="Dirac canaries per DP-SGD run; default: %(default)s")
    p.add_argument("--runs", type=int, default=50, help="DP-SGD runs pooled per row; default: %(default)s")
    p.add_argument("--releases", type=int, default=300, help="releases per noise check; default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the audit (datasets, canary coins); default: %(default)s")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of every bound; default: %(default)s")
    p.add_argument("--log", default="benchmarks/results/privacy_audit.log", help="where the table goes; default: %(default)s")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="which audits to run (e.g. --parts pe noise with --log "
                        "benchmarks/results/privacy_audit_pe.log); default: all")
    args = p.parse_args(argv)

    cfg = load_config(args.configfile)
    pr = cfg["privacy"]
    out = Tee()
    t0 = time.perf_counter()
    for line in log_header(__file__, argv):
        out(line)
    out(f"config {args.configfile}: n={cfg['subsets']['set_size']}, d={cfg['embedder']['dim']}, "
        f"C={pr['clip_norm']}, delta={pr['delta']}, epsilons={pr['epsilons']}; alpha={args.alpha}; "
        f"a lower bound above the claim refutes it ('caught'); 'ideal' = the same audit of the "
        f"exactly accounted mechanism")
    out()
    out(HEADER)
    out("-" * len(HEADER))
    ok = release_rows(out, cfg, args) if "release" in args.parts else True
    t_release = time.perf_counter() - t0
    if "dpsgd" in args.parts:
        ok &= dpsgd_rows(out, cfg, args)
    t_dpsgd = time.perf_counter() - t0 - t_release
    if "pe" in args.parts:
        ok &= pe_rows(out, cfg, args)
    if "noise" in args.parts:
        out()
        ok &= noise_rows(out, cfg, args)
    total = time.perf_counter() - t0
    out()
    out(f"runtime {total:.0f} s (release audit {t_release:.0f} s, DP-SGD audit {t_dpsgd:.0f} s); "
        f"correct mechanisms {'pass' if ok else 'FAIL'}")
    log = write_log(args.log, out.lines)
    print(f"wrote {log}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
