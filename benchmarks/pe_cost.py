#!/usr/bin/env python
"""Cost of one Private Evolution cell against the other per-cell work of the comparison.

    python benchmarks/pe_cost.py [RESULTS] [--configfile config/config.yaml] [--epsilon 1]
        [--repeats 2] [--threads 1] [--log benchmarks/results/pe_cost.log]

In one process, alternating, on the same thread count and the configured base model
(RESULTS/base, or a randomly initialised UNet of the configured architecture if RESULTS has
none: the cost does not depend on the weights): (a) one PE cell of the config at --epsilon
(its tuned knobs, or the defaults), on a public proxy-sized set of random embeddings; (b) one
cell of rule sample (sampling.num_samples DDIM samples of the base model); (c) one DP-SGD fit
with the method's tuned hyperparameters at --epsilon (dpsgd). Inception features are left
out of all three (every cell pays them equally). Prints the seconds of each (the median of
--repeats) and the ratios PE/sample and PE/DP-SGD, which hold on a noisy machine; the
absolute seconds drift from day to day.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _header import log_header, write_log  # benchmarks/_header.py: command, commit, date; atomic log


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", default="benchmarks/results/pe_cost.log")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dpdeepsets import baselines as B
    from dpdeepsets import diffusion, lora, methods, noise, privacy
    from dpdeepsets import private_evolution as PE
    from dpdeepsets.config import load_config

    cfg = load_config(args.configfile)
    s, priv, bl, lc = cfg["sampling"], cfg["privacy"], cfg["baselines"], cfg["lora"]
    base_dir = Path(args.results) / "base"
    if base_dir.exists():
        unet, sched = diffusion.load_base(base_dir)
        where = str(base_dir)
    else:
        b = cfg["base"]
        unet, sched = diffusion.base_from_config(b, image_size=cfg["data"]["image_size"], channels=1)
        unet.eval().requires_grad_(False)
        where = "random weights"
    n, d = cfg["subsets"]["set_size"], cfg["embedder"]["dim"]
    rng = np.random.default_rng(0)
    private = rng.normal(size=(n, d))
    private /= np.linalg.norm(private, axis=1, keepdims=True)
    proj = rng.normal(size=(unet.config.sample_size ** 2 * unet.config.in_channels, d))

    def embed(images):  # a pixel projection: what the pixels embedder costs
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ proj

    params, source = PE.params_for(cfg["private_evolution"], args.epsilon, s["ddim_steps"], s["num_samples"])
    sigma = privacy.pe_histogram_sigma(args.epsilon, priv["delta"], params.iterations, priv["adjacency"])

    def pe_cell():
        PE.private_evolution(private, unet=unet, scheduler=sched, embed=embed, params=params, sigma=sigma,
                             noise_source=noise.PublicSeedNoise(1), seed=0, batch_size=s["batch_size"])

    def sample_cell():
        diffusion.ddim_sample(unet, sched, num_samples=s["num_samples"], steps=s["ddim_steps"], seed=0,
                              batch_size=s["batch_size"])

    hyper = B.hyperparameters(bl, "dpsgd", args.epsilon)
    images = torch.rand(n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size) * 2 - 1

    def dpsgd_fit():
        u = copy.deepcopy(unet)
        targets = lora.find_targets(u, lc["target_modules"], lc["rank"])
        basis = lora.make_basis(targets, lc["rank"], lc["basis_seed"])
        plan = B.plan_dp(hyper, n=n, epsilon=args.epsilon, delta=priv["delta"], accountant=bl["accountant"],
                         prv_max_epsilon=bl["prv_max_epsilon"])
        B.fit_lora(u, sched, targets, images, method=methods.get("dpsgd"), hyper=hyper, rank=lc["rank"],
                   alpha=lc["alpha"], parametrisation=bl["parametrisation"], basis=basis, dp=plan,
                   noise=noise.PublicSeedNoise(2))

    timings = {"pe": [], "sample": [], "dpsgd": []}
    for _ in range(args.repeats):
        for name, fn in (("pe", pe_cell), ("sample", sample_cell), ("dpsgd", dpsgd_fit)):
            t0 = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    lines = [*log_header(__file__, argv),
             f"{args.threads} thread(s); base: {where}; load {os.getloadavg()[0]:.2f}",
             f"PE at epsilon {args.epsilon:g} ({source}): N={params.population}, T={params.iterations}, "
             f"k={params.lookahead}, H={params.threshold:g}, strengths {np.round(params.strengths(), 3).tolist()}, "
             f"{params.random_steps}/{params.variation_steps} DDIM steps",
             f"DP-SGD at epsilon {args.epsilon:g} ({hyper.source}): {hyper.steps} steps x batch "
             f"{hyper.batch_size}, K={hyper.noise_multiplicity}, {hyper.optimizer}",
             "",
             f"{'work (Inception features excluded)':<44} {'seconds (median)':>17}",
             f"{'one Private Evolution cell':<44} {med['pe']:>17.1f}",
             f"{'one sample cell (' + str(s['num_samples']) + ' DDIM samples)':<44} {med['sample']:>17.1f}",
             f"{'one DP-SGD fit (dpsgd)':<44} {med['dpsgd']:>17.1f}",
             "",
             f"PE / sample cell = {med['pe'] / med['sample']:.2f}; PE / DP-SGD fit = {med['pe'] / med['dpsgd']:.2f}",
             f"(a PE cell replaces a DP-SGD fit plus its sample cell: "
             f"{med['pe'] / (med['dpsgd'] + med['sample']):.2f} of their cost)"]
    text = "\n".join(lines) + "\n"
    print(text)
    write_log(args.log, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
