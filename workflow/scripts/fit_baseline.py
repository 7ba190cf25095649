#!/usr/bin/env python
"""fit_baseline: a gradient-fitted method on one private set (or the public-pool LoRA).

--method M           a registered method whose producer is fit_baseline (dpdeepsets.methods):
                     the DP-SGD methods (dpsgd, public_ft_dpsgd, pda_dpmd: one independent fit
                     per --epsilon, noise and Poisson batches from the secret key) or the
                     NON-private nonprivate reference (--epsilon inf); bank_recipe_lora: the
                     private set fitted with the public LoRA bank's own recipe
                     (dpdeepsets.lora.fit_loras with the lora section), NON-private too
--public-pool        the non-private LoRA of the PUBLIC pool (the start of the public_start methods)

DP fits are a DP step: they read private data and write adapters whose privacy is accounted
by dpdeepsets.privacy; the numbers go to --out-ledger. Their per-step losses are private and
are neither logged nor stored. Each epsilon starts from the freshly loaded base model, so a
grid job equals one process per epsilon.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging, write_json

SECTIONS = ["baselines", "lora", "privacy"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--method", help="a gradient-fitted method of the registry")
    who.add_argument("--public-pool", action="store_true", help="fit the public-pool LoRA")
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--private", help="private pool .npz")
    p.add_argument("--sets", help="private sets .npz")
    p.add_argument("--pset", help="private set id, e.g. p0")
    p.add_argument("--n", type=int, help="the public set size n (subsets.set_size): the sample rate is batch / n")
    p.add_argument("--key", help="the secret noise key (DP methods, privacy.noise=keyed)")
    p.add_argument("--public", help="public pool .npz (--public-pool, public_gradient methods)")
    p.add_argument("--public-lora", help="public-pool LoRA adapter directory (public_start methods)")
    p.add_argument("--tuned", help="results/tuning/chosen.yaml: use its tuned values "
                                   "(baselines.tuning.auto: tuned on this config's public proxies)")
    p.add_argument("--epsilon", nargs="+", default=["inf"],
                   help="target epsilon(s) (DP methods), 'inf' otherwise; one fit each")
    p.add_argument("--seed", type=int, default=0, help="experiment replicate")
    p.add_argument("--out", nargs="+", required=True, help="output PEFT adapter directory per epsilon")
    p.add_argument("--out-ledger", nargs="+", help="ledger .json per epsilon (private-set fits)")
    args = p.parse_args()
    # The public-pool LoRA reads no privacy settings (changing them must not refit it).
    settings = cli.read_settings(args, SECTIONS[:2] if args.public_pool else SECTIONS)
    cfg, lcfg, priv = settings["baselines"], settings["lora"], settings.get("privacy")
    if args.tuned:  # baselines.tuning.auto: the values tune_baselines chose for this config
        from dpdeepsets.config import read_tuned

        cfg["tuned"] = read_tuned(args.tuned, "baselines")
    log = setup_logging("fit_baseline")
    set_threads(args.threads)
    import math

    from dpdeepsets import baselines, data, diffusion, lora, methods, noise
    from dpdeepsets.io import parse_epsilon
    from dpdeepsets.seeds import derive_seed

    if args.public_pool:
        method, dp = methods.Method("public_pool_lora", "public-pool LoRA", "public_only", None,
                                    "the non-private LoRA of the public pool"), False
    else:
        method = methods.get(args.method)
        if method.producer != "fit_baseline":
            raise ValueError(f"{method.name} is not a gradient-fitted method")
        dp = method.privacy == "dp_sgd"
    epsilons = [parse_epsilon(e) for e in args.epsilon]
    for text, eps in zip(args.epsilon, epsilons):
        if dp != math.isfinite(eps):
            raise ValueError(f"{method.name} needs {'a finite' if dp else 'inf as'} --epsilon, got {text}")
    needs = {"--private": not args.public_pool, "--sets": not args.public_pool,
             "--pset": not args.public_pool, "--n": not args.public_pool,
             "--out-ledger": not args.public_pool, "--key": dp and priv["noise"] == "keyed",
             "--public": args.public_pool or method.public_gradient,
             "--public-lora": method.public_start}
    for flag, needed in needs.items():
        if needed and getattr(args, flag[2:].replace("-", "_")) is None:
            raise ValueError(f"{method.name} needs {flag}")
    ledgers = args.out_ledger or [None] * len(args.out)
    if not len(epsilons) == len(args.out) == len(ledgers):
        raise ValueError(f"{len(epsilons)} --epsilon, {len(args.out)} --out and "
                         f"{len(ledgers)} --out-ledger: give one of each per epsilon")

    device = pick_device()
    public = diffusion.images_to_tensor(data.load_split(args.public)[0]) if args.public else None
    if args.public_pool:
        images, pset = public, "public"
    else:
        private, _ = data.load_split(args.private, mmap=True)
        images = diffusion.images_to_tensor(private[data.private_set_rows(args.sets, args.pset)])
        pset = args.pset
    init_factors = lora.load_adapter_factors(args.public_lora) if args.public_lora else None
    for text, eps, out, out_ledger in zip(args.epsilon, epsilons, args.out, ledgers):
        hyper = (baselines.public_pool_hyper(cfg) if args.public_pool
                 else baselines.hyperparameters(cfg, method.name, eps))
        # Every fit starts from the freshly loaded base model: fits are independent.
        unet, scheduler = diffusion.load_base(args.base)
        unet.to(device)
        targets = lora.find_targets(unet, lcfg["target_modules"], lcfg["rank"])
        basis = {k: v.to(device) for k, v in lora.make_basis(targets, lcfg["rank"], lcfg["basis_seed"]).items()}
        init = None if init_factors is None else _start(init_factors, targets, basis, cfg, args.public_lora, device)
        plan = source = None
        if dp:
            plan = baselines.plan_dp(hyper, n=args.n, epsilon=eps, delta=priv["delta"],
                                     accountant=cfg["accountant"], prv_max_epsilon=cfg["prv_max_epsilon"])
            source = noise.noise_source(priv["noise"], args.key, noise.cell_identity(
                mechanism="dp_sgd", method=method.name, pset=pset, epsilon=eps, seed=args.seed))
        if method.bank_recipe:  # exactly the bank's fitter and settings, on the private set
            hyper = baselines.Hyper(steps=lcfg["steps"], batch_size=lcfg["batch_size"], lr=lcfg["lr"],
                                    momentum=0.0, max_grad_norm=math.inf, noise_multiplicity=1,
                                    optimizer="adam", source="the LoRA bank's recipe (lora.*)")
        log.info("%s on %s: %d images, %d steps, batch %d, lr %g (%s), epsilon %s", method.name,
                 pset, images.shape[0], hyper.steps, hyper.batch_size, hyper.lr, hyper.source, text)
        with Stopwatch(log, f"{method.name} fit"):
            if method.bank_recipe:
                result = _bank_recipe_fit(unet, scheduler, targets, basis, images.to(device), lcfg,
                                          seed=derive_seed(cfg["seed"], "bank_recipe", pset, args.seed),
                                          device=device, desc=f"{method.name} {pset}")
            else:
                result = baselines.fit_lora(
                    unet, scheduler, targets, images.to(device), method=method, hyper=hyper,
                    rank=lcfg["rank"], alpha=lcfg["alpha"], parametrisation=cfg["parametrisation"],
                    basis=basis, init=init, dp=plan, noise=source, public_images=public,
                    public_batch_size=cfg["pda_public_batch_size"],
                    grad_sample_mode=cfg["grad_sample_mode"],
                    draws_seed=derive_seed(cfg["seed"], "fit", method.name, pset, text, args.seed),
                    device=device, desc=f"{method.name} {pset} eps{text}")
        dim = sum(t.out_features * lcfg["rank"] + (t.fan_in * lcfg["rank"]
                                                   if cfg["parametrisation"] == "full" else 0)
                  for t in targets)
        meta = {"method": method.name, "pset": pset, "epsilon": text,
                "parametrisation": cfg["parametrisation"]}
        if out_ledger is not None:
            ledger = baselines.ledger_entry(
                method=method.name, pset=pset, seed=args.seed, epsilon=eps, delta=priv["delta"],
                n=args.n, dim=dim, hyper=hyper, parametrisation=cfg["parametrisation"],
                privacy=result.privacy, noise=source)
            meta.update({k: ledger[k] for k in ("delta", "sigma", "accounted_epsilon", "adjacency")})
            write_json(out_ledger, {"ledger": ledger})
        lora.save_peft_adapter(out, targets, result.a, result.b, rank=lcfg["rank"],
                               alpha=lcfg["alpha"], extra_meta=meta)
        log.info("wrote adapter %s (%d trainable LoRA parameters)", out, dim)


def _bank_recipe_fit(unet, scheduler, targets, basis, images, lcfg, *, seed, device, desc):
    """One LoRA fitted by the public bank's own fitter (dpdeepsets.lora.fit_loras) and settings."""
    from dpdeepsets import baselines, lora

    layers = lora.attach(unet, targets, basis, lcfg["alpha"] / lcfg["rank"])
    b = lora.fit_loras(unet, scheduler, layers, targets, [images], [0], rank=lcfg["rank"],
                       steps=lcfg["steps"], batch_size=lcfg["batch_size"], lr=lcfg["lr"], seed=seed,
                       desc=desc, device=device)
    lora.detach(unet, layers)
    return baselines.FitResult(a={k: v.cpu() for k, v in basis.items()}, b={k: v[0] for k, v in b.items()})


def _start(factors, targets, basis, cfg, path, device):
    """The public-pool LoRA as a start: same targets, and (gauge-fixed) the same basis A."""
    a, b = factors
    if set(a) != {t.name for t in targets}:
        raise ValueError(f"{path}: its target modules differ from lora.target_modules")
    if cfg["parametrisation"] == "gauge_fixed":
        drift = max(float((a[k].to(device) - basis[k]).abs().max()) for k in a)
        if drift > 1e-6:
            raise ValueError(f"{path}: its A is not the gauge-fixed basis (fitted with another "
                             f"parametrisation or basis_seed)")
    return ({k: v.to(device) for k, v in a.items()}, {k: v.to(device) for k, v in b.items()})


if __name__ == "__main__":
    cli.run(main)
