#!/usr/bin/env python
"""GPU-hours of config/paper.yaml, from per-stage throughputs measured on one device.

    python benchmarks/gpu_plan.py [--device cuda] [--quick] [--threads N]
        [--configfile config/config.yaml config/paper.yaml] [--public-images 1281167]
        [--private-images 10000] [--bank-subsets 16] [--log benchmarks/results/gpu_plan_<device>.log]

One command for a lent GPU: it measures the paper config's stage classes at reduced counts on
the paper's base model, then multiplies out the config's job counts. The base model is a
randomly initialised 32-px DDPM UNet of the size the paper imports (google/ddpm-cifar10-32:
block_out_channels (128, 256, 256, 256), self-attention at 16 px, 2 layers per block, 35.7 M
parameters; :func:`dpdeepsets.diffusion.build_unet`), fed CIFAR-shaped random inputs: the
speed of a network does not depend on its weights or on the pixels.

Measured (each stage by the library code its rule runs, warm-up excluded; none with --quick):

bank_fit    :func:`dpdeepsets.lora.fit_loras`, ``--bank-subsets`` subsets stacked per step at
            ``lora.batch_size`` each (the job stacks ``lora.shard_size``; more subsets per step
            is faster per image, so fewer than the job's is a conservative rate) -> images/s
dpsgd_step  one DP-SGD step as :func:`dpdeepsets.baselines.fit_lora` takes it: build_lora_unet,
            make_private (opacus, exact ``functorch`` per-sample gradients), row_losses with
            ``noise_multiplicity`` K draws per example, fold_multiplicity, private_step, at
            ``baselines.batch_size`` -> examples/s (K rows each)
ddim        :func:`dpdeepsets.diffusion.ddim_sample` at ``sampling.batch_size``, 10 steps ->
            image-steps/s (one image through the UNet and one DDIM update)
inception   :class:`dpdeepsets.metrics.InceptionFeatures` (torch runtime on the device) at
            ``evaluation.batch_size`` -> images/s
encoder     open_clip ``embedder.clip_model`` with random weights (no checkpoint needed), the
            loop of the open_clip embedder (PIL preprocess on the CPU, encode_image on the
            device) at ``embedder.batch_size`` -> images/s
hypernet    :func:`dpdeepsets.hypernet.train_hypernet`, the bank regression, on the CPU as the
            job runs it (``--threads`` threads; the job's GPU idles meanwhile) -> steps/s

Assumed, not measured: one GPU per job and nothing else on it; no job start-up, model
loading or data loading (docs/speed.md measures the start-up on the CPU); the rows of the
non-private LoRA fits (public-pool LoRA, ``nonprivate``, ``bank_recipe_lora``, PDA-DPMD's
public gradient, the hypernetwork's end-to-end phase) cost what a bank-fit image costs (the
same UNet forward and backward with LoRA layers); Private Evolution's variations cost what a
DDIM image-step costs and its votes embed with the configured encoder; ``pretrain_base`` is
0 (the paper imports a pretrained UNet); ``tune_baselines`` (not part of ``all``), the
hypernetwork's validation and every light (CPU) job are not counted. The public and private
pool sizes are not in the config: ``--public-images`` (ImageNet32 train) and
``--private-images`` (CIFAR-10 test).

``--quick`` measures with tiny counts (two images, one or two steps) so the script runs on a
CPU in a test (tests/unit/test_gpu_plan.py); its numbers say nothing about a GPU. The log
begins with the command line, the commit and the date (``benchmarks/_header.py``).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from _header import log_header  # benchmarks/_header.py: command, commit, date

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# google/ddpm-cifar10-32's UNet2DModel (what config/paper.yaml's base.pretrained_dir holds)
PAPER_UNET = dict(image_size=32, channels=3, block_out_channels=(128, 256, 256, 256),
                  layers_per_block=2, attention_levels=(1,), norm_num_groups=32,
                  attention_head_dim=256)
T_TRAIN = 1000
STAGES = ("bank_fit", "dpsgd_step", "ddim", "inception", "encoder", "hypernet")


class Tee:
    def __init__(self, path: Path | None):
        self.fh = open(path, "w") if path else None

    def __call__(self, line=""):
        print(line, flush=True)
        if self.fh:
            self.fh.write(line + "\n")
            self.fh.flush()


def load_plan_config(files: list[str]) -> dict:
    """The config Snakemake runs (files merged in order, schema defaults, cross-key checks),
    without the checks that its input files exist: the plan reads none of them."""
    import jsonschema

    from dpdeepsets import config as C

    merged = {}
    for f in files:
        C.merge_configs(merged, C._read_yaml(Path(f)))
    validator = C._with_defaults(jsonschema.Draft202012Validator)(C.load_schema())
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        raise C.ConfigError(f"config key {C.describe_validation_error(errors[0])}")
    C.check_consistency(merged)
    return merged


# --------------------------------------------------------------------------- measurements
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, warmup: bool) -> float:
    if warmup:
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _num(x: float) -> str:
    """A rate as printed in a formula: 4 significant digits, thousands separated."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def counts_for(cfg: dict, args) -> dict:
    """Reduced work per measurement: enough for a steady rate on a GPU, tiny with --quick."""
    if args.quick:
        return dict(bank_subsets=1, bank_set=4, bank_batch=2, bank_steps=1, dp_batch=2, dp_k=1,
                    dp_steps=1, ddim_n=2, ddim_steps=2, inc_n=2, inc_batch=2, enc_n=2, enc_batch=2,
                    hyp_steps=2, hyp_bank=8, hyp_pool=64)
    b = cfg["baselines"]
    return dict(bank_subsets=args.bank_subsets, bank_set=cfg["subsets"]["set_size"],
                bank_batch=cfg["lora"]["batch_size"], bank_steps=5, dp_batch=b["batch_size"],
                dp_k=b["noise_multiplicity"], dp_steps=3, ddim_n=cfg["sampling"]["batch_size"],
                ddim_steps=10, inc_n=2 * cfg["evaluation"]["batch_size"],
                inc_batch=cfg["evaluation"]["batch_size"], enc_n=2 * cfg["embedder"]["batch_size"],
                enc_batch=cfg["embedder"]["batch_size"], hyp_steps=100, hyp_bank=256, hyp_pool=4096)


def measure(cfg: dict, args, device, log) -> dict:
    """{stage: (rate, unit, what was timed)}; a stage that cannot run here is (None, reason)."""
    import torch

    from dpdeepsets import baselines as B
    from dpdeepsets import diffusion, hypernet, lora
    from dpdeepsets.metrics import InceptionFeatures
    from dpdeepsets.noise import SecureNoise

    n = counts_for(cfg, args)
    warm = not args.quick
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = diffusion.build_unet(**PAPER_UNET).eval().requires_grad_(False)
    params = sum(p.numel() for p in base.parameters())
    log(f"base UNet: google/ddpm-cifar10-32 architecture, random weights, {params:,} parameters")
    scheduler = diffusion.build_scheduler(T_TRAIN, "linear")
    lcfg = cfg["lora"]
    targets = lora.find_targets(base, lcfg["target_modules"], lcfg["rank"])
    basis = lora.make_basis(targets, lcfg["rank"], lcfg["basis_seed"])
    log(f"LoRA: {len(targets)} target modules, rank {lcfg['rank']}")
    out = {}

    # bank_fit: the batched bank fitter, S subsets stacked per step
    unet = copy.deepcopy(base).to(device)
    layers = lora.attach(unet, targets, {k: v.to(device) for k, v in basis.items()},
                         lcfg["alpha"] / lcfg["rank"])
    subsets = [torch.rand(n["bank_set"], 3, 32, 32, generator=gen).mul(2).sub(1).to(device)
               for _ in range(n["bank_subsets"])]

    def bank(steps):
        return lambda: lora.fit_loras(unet, scheduler, layers, targets, subsets,
                                      list(range(len(subsets))), rank=lcfg["rank"], steps=steps,
                                      batch_size=n["bank_batch"], lr=lcfg["lr"], seed=0,
                                      desc="bank_fit", device=device)

    if warm:
        bank(1)()
    seconds = _timed(bank(n["bank_steps"]), device, warmup=False)
    images = n["bank_subsets"] * n["bank_batch"] * n["bank_steps"]
    out["bank_fit"] = (images / seconds, "images/s",
                       f"fit_loras: {n['bank_subsets']} subsets x {n['bank_batch']} images x "
                       f"{n['bank_steps']} steps in {seconds:.2f} s")
    del unet, layers, subsets

    # dpsgd_step: opacus functorch per-sample gradients, K draws per example
    b = cfg["baselines"]
    model = B.build_lora_unet(copy.deepcopy(base), targets, basis, None, rank=lcfg["rank"],
                              alpha=lcfg["alpha"], parametrisation=b["parametrisation"]).to(device)
    model.train()
    trainable = B.trainable(model)
    opt = torch.optim.Adam(trainable, lr=b["lr"])
    plan = B.DPPlan(epsilon=1.0, delta=cfg["privacy"]["delta"], n=n["dp_batch"], sample_rate=1.0,
                    steps=n["dp_steps"], noise_multiplier=1.0, max_grad_norm=b["max_grad_norm"],
                    accountant="gdp")
    net, dp_opt = B.make_private(model, opt, plan, SecureNoise(), "functorch", device)
    x0 = torch.rand(n["dp_batch"], 3, 32, 32, generator=gen).mul(2).sub(1).to(device)

    def dp_steps(steps):
        def run():
            for _ in range(steps):
                t, eps = B.draw_multiplicity(n["dp_batch"], n["dp_k"], (3, 32, 32), T_TRAIN, gen)
                rows = B.row_losses(net, scheduler, x0, t.to(device), eps.to(device))
                dp_opt.zero_grad(set_to_none=True)
                rows.mean().backward()
                B.fold_multiplicity(trainable, n["dp_batch"], n["dp_k"])
                B.private_step(dp_opt, trainable)
        return run

    # opacus' hooks fire on the frozen UNet's outputs too; harmless, and said once per module
    warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
    if warm:
        dp_steps(1)()
    seconds = _timed(dp_steps(n["dp_steps"]), device, warmup=False)
    out["dpsgd_step"] = (n["dp_batch"] * n["dp_steps"] / seconds, "examples/s",
                         f"{n['dp_steps']} DP-SGD steps (functorch) of {n['dp_batch']} examples x "
                         f"K = {n['dp_k']} draws in {seconds:.2f} s", n["dp_k"])
    if hasattr(net, "_close"):
        net._close()
    del model, net, dp_opt, opt, trainable

    # ddim: the sampler every sample job runs
    unet = copy.deepcopy(base).to(device)

    def ddim(steps):
        return lambda: diffusion.ddim_sample(unet, scheduler, num_samples=n["ddim_n"], steps=steps,
                                             seed=0, batch_size=n["ddim_n"], device=device)

    if warm:
        ddim(1)()
    seconds = _timed(ddim(n["ddim_steps"]), device, warmup=False)
    out["ddim"] = (n["ddim_n"] * n["ddim_steps"] / seconds, "image-steps/s",
                   f"ddim_sample: {n['ddim_n']} images x {n['ddim_steps']} steps in {seconds:.2f} s")
    del unet

    # inception: FID/KID features of samples and private sets
    rng = np.random.default_rng(0)
    extractor = InceptionFeatures(device=device, batch_size=n["inc_batch"], runtime="torch",
                                  progress=False)
    imgs = rng.integers(0, 256, (n["inc_n"], 32, 32, 3), dtype=np.uint8)
    seconds = _timed(lambda: extractor(imgs), device, warmup=warm)
    out["inception"] = (n["inc_n"] / seconds, "images/s",
                        f"InceptionFeatures(torch): {n['inc_n']} images, batch {n['inc_batch']}, "
                        f"in {seconds:.2f} s")
    del extractor

    # encoder: the open_clip embedder's loop with random weights
    ecfg = cfg["embedder"]
    if ecfg["backend"] != "open_clip":
        out["encoder"] = (None, f"not measured: embedder.backend is {ecfg['backend']}, not open_clip")
    else:
        try:
            import open_clip
            from PIL import Image

            model, _, preprocess = open_clip.create_model_and_transforms(
                ecfg["clip_model"], pretrained=None, device=device)
            model.eval().requires_grad_(False)
            imgs = rng.integers(0, 256, (n["enc_n"], 32, 32, 3), dtype=np.uint8)

            def encode():
                with torch.no_grad():
                    for s in range(0, len(imgs), n["enc_batch"]):
                        x = torch.stack([preprocess(Image.fromarray(im))
                                         for im in imgs[s:s + n["enc_batch"]]]).to(device)
                        model.encode_image(x).float().cpu()

            seconds = _timed(encode, device, warmup=warm)
            out["encoder"] = (n["enc_n"] / seconds, "images/s",
                              f"open_clip {ecfg['clip_model']} (random weights, PIL preprocess + "
                              f"encode_image): {n['enc_n']} images, batch {n['enc_batch']}, in {seconds:.2f} s")
            del model
        except Exception as exc:  # an architecture open_clip cannot build offline: say so
            out["encoder"] = (None, f"not measured: open_clip {ecfg['clip_model']}: "
                                    f"{type(exc).__name__}: {exc}")

    # hypernet: the bank regression, on the CPU (where train_hypernet runs it)
    h = cfg["hypernet"]
    dim = ecfg["dim"]
    net = hypernet.HyperNet(dim, targets, lcfg["rank"], clip_norm=cfg["privacy"]["clip_norm"],
                            d_model=h["d_model"], layers=h["layers"], heads=h["heads"])
    bank_b = {t.name: torch.randn(n["hyp_bank"], t.out_features, lcfg["rank"], generator=gen)
              for t in targets}
    net.set_target_stats(bank_b)
    emb = rng.standard_normal((n["hyp_pool"], dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    members = rng.integers(0, n["hyp_pool"], (n["hyp_bank"], cfg["subsets"]["set_size"]))

    def regression():
        hypernet.train_hypernet(net, emb, members, bank_b, [0.0, 0.1, 1.0], steps=n["hyp_steps"],
                                batch_size=h["batch_size"], lr=h["lr"], weight_decay=h["weight_decay"],
                                subsample_fraction=h["subsample_fraction"], seed=0)

    seconds = _timed(regression, torch.device("cpu"), warmup=False)
    out["hypernet"] = (n["hyp_steps"] / seconds, "steps/s",
                       f"train_hypernet (bank regression, CPU, {torch.get_num_threads()} threads): "
                       f"{n['hyp_steps']} steps of batch {h['batch_size']} in {seconds:.2f} s")
    return out


# --------------------------------------------------------------------------- the plan
def plan_rows(cfg: dict, rates: dict, args) -> list[tuple]:
    """(stage, rules, work formula, hours or None) for config ``cfg`` at the measured rates."""
    from diffusers import DDIMScheduler

    from dpdeepsets import methods as M
    from dpdeepsets.baselines import hyperparameters
    from dpdeepsets.io import format_epsilon
    from dpdeepsets.private_evolution import params_for, sdedit_timesteps

    def rate(stage):
        return rates[stage][0]

    def hours(work, stage):
        r = rate(stage)
        return None if r is None else work / r / 3600

    def per(stage):
        r = rate(stage)
        return f"{_num(r)} {rates[stage][1]}" if r is not None else "(not measured)"

    P, S = cfg["subsets"]["num_private"], len(cfg["evaluation"]["seeds"])
    n_set = cfg["subsets"]["set_size"]
    finite = [format_epsilon(e) for e in cfg["privacy"]["epsilons"]]
    E = len(finite)
    methods = [M.get(m) for m in cfg["evaluation"]["methods"]]
    lc, b, sc = cfg["lora"], cfg["baselines"], cfg["sampling"]
    rows = []

    m_pub = cfg["subsets"]["num_public"]
    work = m_pub * lc["steps"] * lc["batch_size"]
    rows.append(("fit_bank_shard", "bank_fit",
                 f"M {m_pub} x lora.steps {lc['steps']} x lora.batch_size {lc['batch_size']} = "
                 f"{work:,} images / {per('bank_fit')}", hours(work, "bank_fit")))

    dp_sgd = [m for m in methods if m.privacy == "dp_sgd"]
    if any(m.public_start for m in dp_sgd):
        k = b["noise_multiplicity"]
        work = b["public_steps"] * b["public_batch_size"] * k
        rows.append(("fit_public_pool_lora", "bank_fit",
                     f"public_steps {b['public_steps']} x public_batch_size {b['public_batch_size']} "
                     f"x K {k} = {work:,} rows / {per('bank_fit')}", hours(work, "bank_fit")))

    if dp_sgd:
        k_measured = rates["dpsgd_step"][3] if rates["dpsgd_step"][0] is not None else 1
        dp_rows, pub_rows = 0, 0
        for m in dp_sgd:
            for e in cfg["privacy"]["epsilons"]:
                hp = hyperparameters(b, m.name, e)
                dp_rows += hp.steps * hp.batch_size * hp.noise_multiplicity
                if m.public_gradient:
                    pub_rows += hp.steps * b["pda_public_batch_size"] * hp.noise_multiplicity
        dp_rows *= P * S
        pub_rows *= P * S
        hp = hyperparameters(b, dp_sgd[0].name, cfg["privacy"]["epsilons"][0])
        rows_rate = None if rate("dpsgd_step") is None else rate("dpsgd_step") * k_measured
        rows.append(("fit_baseline (DP-SGD)", "dpsgd_step",
                     f"{len(dp_sgd)} methods x P {P} x S {S} x E {E} epsilons x steps {hp.steps} x "
                     f"batch {hp.batch_size} x K {hp.noise_multiplicity} (per method and epsilon, "
                     f"tuned values included) = {dp_rows:,} rows / ({per('dpsgd_step')} x K "
                     f"{k_measured} rows each)",
                     None if rows_rate is None else dp_rows / rows_rate / 3600))
        if pub_rows:
            pda = [m for m in dp_sgd if m.public_gradient]
            hp = hyperparameters(b, pda[0].name, cfg["privacy"]["epsilons"][0])
            rows.append(("fit_baseline (PDA-DPMD public gradient)", "bank_fit",
                         f"{len(pda)} method x P {P} x S {S} x E {E} x steps {hp.steps} x "
                         f"pda_public_batch_size {b['pda_public_batch_size']} x K "
                         f"{hp.noise_multiplicity} = {pub_rows:,} rows / {per('bank_fit')}",
                         hours(pub_rows, "bank_fit")))

    nonprivate = [m for m in methods if m.privacy == "nonprivate"]
    if nonprivate:
        work, parts = 0, []
        for m in nonprivate:
            if m.bank_recipe:
                w = lc["steps"] * lc["batch_size"]
                parts.append(f"{m.name} {lc['steps']} x {lc['batch_size']}")
            else:
                hp = hyperparameters(b, m.name, math.inf)
                w = hp.steps * hp.batch_size * hp.noise_multiplicity
                parts.append(f"{m.name} {hp.steps} x {hp.batch_size} x K {hp.noise_multiplicity}")
            work += w * P * S
        rows.append(("fit_nonprivate", "bank_fit",
                     f"P {P} x S {S} x ({' + '.join(parts)}) = {work:,} rows / {per('bank_fit')}",
                     hours(work, "bank_fit")))

    h = cfg["hypernet"]
    reg = None if rate("hypernet") is None else h["steps"] / rate("hypernet") / 3600
    e2e = h["e2e_steps"] * h["e2e_sets"] * h["e2e_images"]
    e2e_h = hours(e2e, "bank_fit") if e2e else 0.0
    rows.append(("train_hypernet", "hypernet",
                 f"regression hypernet.steps {h['steps']:,} / {per('hypernet')} (CPU; the GPU is "
                 f"held) + end-to-end e2e_steps {h['e2e_steps']} x e2e_sets {h['e2e_sets']} x "
                 f"e2e_images {h['e2e_images']} = {e2e:,} images / {per('bank_fit')}",
                 None if reg is None or e2e_h is None else reg + e2e_h))

    ecfg = cfg["embedder"]
    work = ecfg["fit_max_images"] + args.public_images + args.private_images
    rows.append(("fit_embedder, embed", "encoder",
                 f"fit_max_images {ecfg['fit_max_images']:,} + public pool {args.public_images:,} + "
                 f"private pool {args.private_images:,} = {work:,} images / {per('encoder')}",
                 hours(work, "encoder")))

    sampled, evolved = 0, 0
    for m in methods:
        cells = (P if m.per_set else 1) * S * len(m.epsilons(finite, cfg["privacy"]["nonprivate_reference"]))
        if m.producer == "evolve":
            evolved += cells
        else:
            sampled += cells
    work = sampled * sc["num_samples"] * sc["ddim_steps"]
    rows.append(("sample, sample_reference, sample_public", "ddim",
                 f"{sampled:,} cells x num_samples {sc['num_samples']} x ddim_steps "
                 f"{sc['ddim_steps']} = {work:,} image-steps / {per('ddim')}", hours(work, "ddim")))

    pe_steps, pe_embed = 0, 0
    if evolved:
        section = cfg["private_evolution"]
        for e in cfg["privacy"]["epsilons"]:
            p, _ = params_for(section, e, sc["ddim_steps"], sc["num_samples"])
            ddim = DDIMScheduler(num_train_timesteps=T_TRAIN)
            ddim.set_timesteps(p.variation_steps)
            per_var = [len(sdedit_timesteps(ddim, s, T_TRAIN)) for s in p.strengths()]
            pe_steps += p.population * (p.random_steps + (p.lookahead + 1) * sum(per_var))
            pe_embed += p.population * max(p.lookahead, 1) * p.iterations
        cells_pe = evolved // E
        pe_steps, pe_embed = pe_steps * cells_pe, pe_embed * cells_pe
        p, _ = params_for(section, cfg["privacy"]["epsilons"][0], sc["ddim_steps"], sc["num_samples"])
        ddim = DDIMScheduler(num_train_timesteps=T_TRAIN)
        ddim.set_timesteps(p.variation_steps)
        sdedit = sum(len(sdedit_timesteps(ddim, s, T_TRAIN)) for s in p.strengths())
        enc_h = hours(pe_embed, "encoder")
        ddim_h = hours(pe_steps, "ddim")
        rows.append(("private_evolution", "ddim",
                     f"{evolved:,} cells x N {p.population} x (random_steps {p.random_steps} + "
                     f"(lookahead {p.lookahead} + 1) x {sdedit} SDEdit steps over T {p.iterations} "
                     f"iterations) = "
                     f"{pe_steps:,} image-steps / {per('ddim')} + {pe_embed:,} vote embeddings / "
                     f"{per('encoder')}", None if enc_h is None or ddim_h is None else enc_h + ddim_h))

    work = (sampled + evolved) * sc["num_samples"] + P * n_set
    rows.append(("Inception (in sample*, private_evolution, private_set_features)", "inception",
                 f"{sampled + evolved:,} cells x {sc['num_samples']} samples + P {P} x n {n_set} = "
                 f"{work:,} images / {per('inception')}", hours(work, "inception")))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny counts (a CPU test of the script)")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml", "config/paper.yaml"],
                   help="merged in order, as `snakemake --configfile config/paper.yaml` does")
    p.add_argument("--public-images", type=int, default=1_281_167, help="public pool (ImageNet32 train)")
    p.add_argument("--private-images", type=int, default=10_000, help="private pool (CIFAR-10 test)")
    p.add_argument("--bank-subsets", type=int, default=16,
                   help="subsets stacked per bank-fit step (the job stacks lora.shard_size)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--log", help="log file (default benchmarks/results/gpu_plan_<device>.log)")
    args = p.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device is visible (use --device cpu --quick "
              f"to test the script on a CPU)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    log_path = Path(args.log or ROOT / "benchmarks" / "results" / f"gpu_plan_{device.type}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = Tee(log_path)
    for line in log_header(__file__, argv):
        log(line)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        what = f"CPU, {torch.get_num_threads()} torch threads"
    log(f"device: {device} ({what}); torch {torch.__version__}; "
        f"{'QUICK (tiny counts: rates say nothing about a GPU)' if args.quick else 'reduced counts'}")
    cfg = load_plan_config(args.configfile)
    log(f"config: {' + '.join(args.configfile)}")

    rates = measure(cfg, args, device, log)
    log()
    log("measured throughput per stage:")
    for stage in STAGES:
        r = rates[stage]
        log(f"  {stage:11s} " + (f"{r[0]:12,.2f} {r[1]:14s} {r[2]}" if r[0] is not None else r[1]))

    rows = plan_rows(cfg, rates, args)
    log()
    log(f"GPU-hours of {' + '.join(args.configfile)} (one GPU per job; formula: work / measured rate):")
    total, missing = 0.0, []
    for stage, _, formula, h in rows:
        log(f"  {stage}: " + (f"{h:,.2f} GPU-h" if h is not None else "not estimated")
            + f"  [{formula}]")
        if h is None:
            missing.append(stage)
        else:
            total += h
    log(f"GPU-hours total: {total:,.1f} on {what}"
        + (f" (without {', '.join(missing)}: not measured)" if missing else ""))
    log("not counted: job start-up and data loading, pretrain_base (imported), tune_baselines, "
        "the hypernetwork's validation, the light (CPU) jobs")
    log(f"wrote {log_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
