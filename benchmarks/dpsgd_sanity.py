#!/usr/bin/env python
"""Does DP-SGD approach its own non-private fit as epsilon grows? (the baseline's sanity test)

    python benchmarks/dpsgd_sanity.py [results] [--configfile F [F ...]] [--pset p0]
        [--epsilons 16 64 256 1024 4096 16384]

On a finished run's base model and private set, fits ``dpsgd`` with the hyperparameters the
config gives it at the largest grid epsilon (the tuned ones, if any) at each ``--epsilons``,
the same fit without clipping or noise (``nonprivate`` with exactly those hyperparameters:
DP-SGD's own non-private twin) and the tuned ``nonprivate`` ceiling, samples each with the
pipeline's sampler and scores it with its evaluator (FID / KID against the set). Prints FID
per epsilon and its ratio to the twin's, with the noise multiplier and the noise-to-signal
scale z / (q n) of each fit (the std of the noise in the averaged clipped gradient, in units
of the clip norm): the target is within 5 % at the largest epsilon. Noise: fresh OS entropy
(``secure``); these fits are never published. EVALUATION ONLY (reads a private set).
"""

import argparse
import copy
import dataclasses
import math

import numpy as np
import torch

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                   help="one or more config files, merged like snakemake --configfile")
    p.add_argument("--pset", default="p0")
    p.add_argument("--epsilons", nargs="+", type=float, default=[256, 1024, 4096, 16384, 65536])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print_log_header(__file__)
    torch.set_num_threads(args.threads)
    from dpdeepsets import baselines as D
    from dpdeepsets import data, diffusion, lora, methods, noise, sampling, scores
    from dpdeepsets.config import load_config
    from dpdeepsets.metrics import InceptionFeatures

    cfg = load_config(args.configfile)
    b, lc, priv, s = cfg["baselines"], cfg["lora"], cfg["privacy"], cfg["sampling"]
    r = args.results
    images, _ = data.load_split(f"{r}/data/private.npz", mmap=True)
    x = diffusion.images_to_tensor(np.asarray(images[data.private_set_rows(f"{r}/subsets/private.npz", args.pset)]))
    reference = np.load(f"{r}/eval/private_sets.npz")[f"features_{args.pset}"]
    hyper = D.hyperparameters(b, "dpsgd", max(priv["epsilons"]))
    n = cfg["subsets"]["set_size"]
    base, sched = diffusion.load_base(f"{r}/base")
    targets = lora.find_targets(base, lc["target_modules"], lc["rank"])
    basis = lora.make_basis(targets, lc["rank"], lc["basis_seed"])

    plans = {}

    def fit(eps, h=hyper):
        dp = math.isfinite(eps)
        plan = D.plan_dp(h, n=n, epsilon=eps, delta=priv["delta"], accountant=b["accountant"],
                         prv_max_epsilon=b["prv_max_epsilon"]) if dp else None
        plans[eps] = plan
        res = D.fit_lora(copy.deepcopy(base), sched, targets, x,
                         method=methods.get("dpsgd" if dp else "nonprivate"),
                         hyper=dataclasses.replace(h, source="sanity"), rank=lc["rank"],
                         alpha=lc["alpha"], parametrisation=b["parametrisation"], basis=basis,
                         dp=plan, noise=noise.SecureNoise() if dp else None, draws_seed=0)
        return res.a, res.b, lc["alpha"] / lc["rank"]

    epsilons = [math.inf, *args.epsilons]
    ceiling = D.hyperparameters(b, "nonprivate", math.inf)
    loras = [fit(e) for e in epsilons] + [fit(math.inf, ceiling)]
    cells = sampling.sample_loras(copy.deepcopy(base), sched, loras, num_samples=s["num_samples"],
                                  steps=s["ddim_steps"], seed=0, batch_size=s["batch_size"], eta=s["eta"])
    extractor = InceptionFeatures(batch_size=cfg["evaluation"]["batch_size"], runtime="auto",
                                  cache_dir=f"{r}/cache/inception")
    fids = [scores.fid_from_features(extractor(c), reference) for c in cells]
    (base_cell,) = sampling.sample_loras(copy.deepcopy(base), sched, None, num_samples=s["num_samples"],
                                         steps=s["ddim_steps"], seed=0, batch_size=s["batch_size"])
    print(f"{args.pset}, {s['num_samples']} samples per cell, DP-SGD hyperparameters {dataclasses.asdict(hyper)}")
    print(f"base model (no LoRA): FID {scores.fid_from_features(extractor(base_cell), reference):.1f}")
    print(f"tuned nonprivate ceiling ({ceiling.optimizer}, lr {ceiling.lr:g}, {ceiling.steps} steps x "
          f"{ceiling.batch_size}): FID {fids[-1]:.1f}")
    print(f"DP-SGD's non-private twin (its hyperparameters, no clipping, no noise): FID {fids[0]:.1f}")
    for eps, fid in zip(epsilons[1:], fids[1:-1]):
        pl = plans[eps]
        print(f"DP-SGD epsilon {eps:10g}: FID {fid:6.1f}  ratio to its twin {fid / fids[0]:.3f}  "
              f"(noise multiplier {pl.noise_multiplier:.3g}, noise std in the averaged gradient "
              f"{pl.noise_multiplier / (pl.sample_rate * pl.n):.2e} x C)")


if __name__ == "__main__":
    main()
