#!/usr/bin/env python
"""LoRA-fit throughput: sequential peft loop vs the batched fitter vs the hardware limit.

    python benchmarks/lora_fit_throughput.py [--configfile config/config.yaml] [--device cpu]

All three are measured in one run on the configured base model architecture (random
weights: throughput does not depend on them), subset size and LoRA settings:

(a) a plain sequential peft loop: one subset at a time, peft LoRA injected on the same
    targets, Adam over its A and B, batch ``lora.batch_size``;
(b) the batched fitter (``dpdeepsets.lora.fit_loras``): ``lora.shard_size`` subsets per
    stacked pass;
(c) the limit: forward + backward of the same frozen base with ONE LoRA at the same total
    batch (S x b): the compute a batched step cannot avoid.
Each is converted to LoRA fits per hour (a fit = ``lora.steps`` steps of ``lora.batch_size``
examples). Ratios (b)/(a) and (b)/(c) are printed; they are what to compare across machines.
(c)/(a) is printed too: no batched fitter can beat the limit, so it bounds (b)/(a) on the
device. ``--profile`` adds torch.profiler's top operators of one (a) step and one (b) step
(where the time goes).
"""

import argparse
import copy
import time

import torch

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def _timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=None, help="override lora.shard_size (S)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--profile", action="store_true", help="print the top operators of one (a) and one (b) step")
    args = p.parse_args()
    print_log_header(__file__)
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, inject_adapter_in_model

    from dpdeepsets import diffusion, lora
    from dpdeepsets.config import load_config

    cfg = load_config(args.configfile)
    b, lc, d = cfg["base"], cfg["lora"], cfg["data"]
    dev = torch.device(args.device)
    s = args.shard_size or lc["shard_size"]
    bs, r = lc["batch_size"], lc["rank"]
    unet, sched = diffusion.base_from_config(b, image_size=d["image_size"], channels=1)
    unet.to(dev).eval().requires_grad_(False)
    targets = lora.find_targets(unet, lc["target_modules"], r)
    basis = {k: v.to(dev) for k, v in lora.make_basis(targets, r, 0).items()}
    k = cfg["subsets"]["set_size"]
    hw = d["image_size"]
    subsets = [torch.rand(k, 1, hw, hw, device=dev) * 2 - 1 for _ in range(s)]
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        x0 = subsets[0][torch.randint(0, k, (n,), generator=gen)]
        t, noise = diffusion.draw_noise(x0.cpu(), b["num_train_timesteps"], gen)
        return x0, t.to(dev), noise.to(dev)

    # (a) sequential peft loop, one subset at a time
    peft_unet = copy.deepcopy(unet)
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=lc["alpha"],
                                       target_modules=[t.name for t in targets]), peft_unet)
    params = [q for n_, q in peft_unet.named_parameters() if "lora_" in n_]
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lc["lr"])

    def peft_step():
        x0, t, noise = batch(bs)
        loss = diffusion.denoising_loss(peft_unet, sched, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_a = _timed(peft_step, 2, args.reps * 4)  # seconds per step of ONE fit

    # (b) batched fitter: S subsets per stacked step (timed through fit_loras itself)
    wrapped = copy.deepcopy(unet)
    layers = lora.attach(wrapped, targets, basis, lc["alpha"] / r)
    lora.fit_loras(wrapped, sched, layers, targets, subsets, list(range(s)), rank=r, steps=1,
                   batch_size=bs, lr=lc["lr"], seed=0, device=dev)  # warm-up
    t0 = time.perf_counter()
    lora.fit_loras(wrapped, sched, layers, targets, subsets, list(range(s)), rank=r,
                   steps=args.reps, batch_size=bs, lr=lc["lr"], seed=0, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_b = (time.perf_counter() - t0) / args.reps  # seconds per step of S fits

    # (c) limit: one LoRA, total batch S*b, same frozen base
    single = {t.name: torch.zeros(1, t.out_features, r, device=dev, requires_grad=True) for t in targets}
    opt_c = torch.optim.Adam(single.values(), lr=lc["lr"])
    lora.set_b(layers, single)

    def limit_step():
        x0, t, noise = batch(s * bs)
        loss = diffusion.denoising_loss(wrapped, sched, x0, t, noise)
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        opt_c.step()

    t_c = _timed(limit_step, 1, args.reps)
    lora.set_b(layers, None)

    steps = lc["steps"]
    fph_a = 3600 / (t_a * steps)
    fph_b = 3600 * s / (t_b * steps)
    fph_c = 3600 * s / (t_c * steps)
    print(f"device {dev}, threads {args.threads}; {len(targets)} LoRA targets, rank {r}; "
          f"subset size {k}; fit = {steps} steps x {bs} examples; S = {s}")
    print(f"(a) sequential peft loop : {1 / t_a * bs:8.1f} examples/s  -> {fph_a:9.1f} fits/hour")
    print(f"(b) batched fitter       : {s / t_b * bs:8.1f} examples/s  -> {fph_b:9.1f} fits/hour")
    print(f"(c) limit (plain, S x b) : {s / t_c * bs:8.1f} examples/s  -> {fph_c:9.1f} fits/hour")
    print(f"(b)/(a) = {fph_b / fph_a:.2f}    (b)/(c) = {fph_b / fph_c:.2f}    "
          f"(c)/(a) = {fph_c / fph_a:.2f} (the most any batched fitter can gain here)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        def one_batched_step():
            lora.fit_loras(wrapped, sched, layers, targets, subsets, list(range(s)), rank=r,
                           steps=1, batch_size=bs, lr=lc["lr"], seed=0, device=dev)

        for label, fn in [("(a) one peft step", peft_step), ("(b) one batched step", one_batched_step)]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"-- {label}: top operators by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
