#!/usr/bin/env python
"""Time of one DP-SGD step (opacus, per-sample gradients) vs one non-private step.

Same LoRA-UNet (base.* and lora.* of the config, randomly initialised base weights: the
cost does not depend on them), same batch of ``baselines.batch_size`` examples with
``baselines.noise_multiplicity`` draws each. Modes: the exact ``functorch`` (what the
pipeline uses) and opacus' default ``hooks`` (for reference only: its conv per-sample
gradients are wrong after attention blocks, see tests/unit/test_baselines.py).

    python benchmarks/dpsgd_step.py [--configfile config/config.yaml] [--steps 5] [--threads 1]
"""

import argparse
import copy
import time
import warnings

import torch

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print_log_header(__file__)
    torch.set_num_threads(args.threads)
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dpdeepsets import baselines as D
    from dpdeepsets import lora as L
    from dpdeepsets.config import load_config
    from dpdeepsets.diffusion import base_from_config

    cfg = load_config(args.configfile)
    b, lc, data = cfg["base"], cfg["lora"], cfg["data"]
    bl = cfg["baselines"]
    torch.manual_seed(0)
    unet, sched = base_from_config(b, image_size=data["image_size"], channels=1)
    targets = L.find_targets(unet, lc["target_modules"], lc["rank"])
    basis = L.make_basis(targets, lc["rank"], lc["basis_seed"])
    bs, k = bl["batch_size"], bl["noise_multiplicity"]
    shape = (1, data["image_size"], data["image_size"])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((bs, *shape), generator=gen) * 2 - 1
    t, noise = D.draw_multiplicity(bs, k, shape, b["num_train_timesteps"], gen)

    def make(mode):
        m = D.build_lora_unet(copy.deepcopy(unet), targets, basis, None, rank=lc["rank"],
                              alpha=lc["alpha"], parametrisation=bl["parametrisation"]).train()
        opt = torch.optim.Adam(D.trainable(m), lr=bl["lr"])
        if mode is None:
            return m, opt, D.trainable(m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(m, loss_reduction="mean", force_functorch=mode == "functorch")
        dpo = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=bl["max_grad_norm"],
                          expected_batch_size=bs)
        return gsm, dpo, D.trainable(m)

    def step(model, opt, params, dp):
        opt.zero_grad(set_to_none=True)
        D.row_losses(model, sched, x0, t, noise).mean().backward()
        if dp:
            D.fold_multiplicity(params, bs, k)
        opt.step()

    results = {}
    warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
    for name, mode in (("non-private", None), ("dp functorch (exact)", "functorch"),
                       ("dp hooks (WRONG for convs after attention)", "hooks")):
        model, opt, params = make(mode)
        step(model, opt, params, mode is not None)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(model, opt, params, mode is not None)
        results[name] = (time.perf_counter() - t0) / args.steps
    n_params = sum(p.numel() for p in params)
    print(f"config {args.configfile}: batch {bs} x multiplicity {k} = {bs * k} rows, "
          f"{len(targets)} LoRA targets, {n_params} trainable parameters "
          f"({bl['parametrisation']}), {args.threads} thread(s), {args.steps} steps")
    ref = results["non-private"]
    for name, sec in results.items():
        print(f"  {name:45s} {sec:7.3f} s/step   x{sec / ref:.2f}")


if __name__ == "__main__":
    main()
