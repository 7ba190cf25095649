#!/usr/bin/env python
"""Batched multi-adapter sampling vs one adapter at a time, measured back to back.

    python benchmarks/sampling_throughput.py [--base results/base] [--cells 6] [--threads 1]

A grid job samples the adapters of one (method, set, seed) -- one per epsilon -- in one
batched DDIM pass (dpdeepsets.sampling: GroupedLoRALayer with one LoRA per group). This
times that against sampling each adapter alone (what the sample jobs did before), on the
default model and sampling settings with random gauge-fixed LoRAs, alternating the two
three times, and prints images per second of both, their ratio and the largest difference
of the samples (grey levels).
"""

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--base", default=None, help="a base model directory (default: a random UNet of the config)")
    p.add_argument("--cells", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print_log_header(__file__)
    torch.set_num_threads(args.threads)
    from dpdeepsets import diffusion, lora, sampling
    from dpdeepsets.config import load_config

    cfg = load_config(args.configfile)
    b, lc, s = cfg["base"], cfg["lora"], cfg["sampling"]
    if args.base:
        unet, sched = diffusion.load_base(args.base)
    else:
        torch.manual_seed(0)
        unet, sched = diffusion.base_from_config(b, image_size=cfg["data"]["image_size"], channels=1)
        unet.eval().requires_grad_(False)
    targets = lora.find_targets(unet, lc["target_modules"], lc["rank"])
    basis = lora.make_basis(targets, lc["rank"], lc["basis_seed"])
    gen = torch.Generator().manual_seed(1)
    loras = [(basis, {t.name: 0.05 * torch.randn(t.out_features, lc["rank"], generator=gen) for t in targets},
              lc["alpha"] / lc["rank"]) for _ in range(args.cells)]
    kw = dict(num_samples=s["num_samples"], steps=s["ddim_steps"], seed=0, batch_size=s["batch_size"],
              eta=s["eta"])
    batched_t, alone_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        batched = sampling.sample_loras(copy.deepcopy(unet), sched, loras, **kw)
        batched_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        alone = [sampling.sample_loras(copy.deepcopy(unet), sched, [x], **kw)[0] for x in loras]
        alone_t.append(time.perf_counter() - t)
    images = args.cells * s["num_samples"]
    tb, ta = statistics.median(batched_t), statistics.median(alone_t)
    diff = max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(batched, alone))
    print(f"{args.cells} cells x {s['num_samples']} samples x {s['ddim_steps']} DDIM steps, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"one adapter at a time: {images / ta:7.1f} img/s ({ta:.1f} s)")
    print(f"batched, one pass    : {images / tb:7.1f} img/s ({tb:.1f} s)")
    print(f"ratio batched / alone: {ta / tb:.2f}x; largest sample difference {diff} grey level(s)")


if __name__ == "__main__":
    main()
