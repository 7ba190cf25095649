#!/usr/bin/env python
"""fit_baseline: a gradient-based LoRA baseline on one private set (or the public LoRA).

Methods (dpdeepsets.dpsgd.train_lora, one training loop):
  nonprivate       LoRA fitted on the private set without noise (NOT private; the ceiling)
  dpsgd            opacus DP-SGD (Poisson sampling, PRV/RDP accountant, per-sample clipping)
  public_ft_dpsgd  DP-SGD started from the public LoRA (--public-lora)
  pda_dpmd         public-data-assisted mirror descent from the public LoRA (needs --public)
  public_lora      the non-private LoRA fitted on the PUBLIC pool (the start of the two above)

DP methods are a DP step: they read private data and write an adapter whose privacy is
accounted by opacus' accountant; the accountant's numbers go to --out-ledger.

Several epsilons of one method and private set run in one process (one independent
training run each, from the freshly loaded base model and the same seed, so each equals the
run of a process of its own): pass one --out and one --out-ledger per --epsilon.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, parse_epsilon, pick_device, set_threads, setup_logging, write_json

SECTIONS = ["baselines", "lora", "privacy"]
METHODS = ["nonprivate", "dpsgd", "public_ft_dpsgd", "pda_dpmd", "public_lora"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--private", help="private pool .npz (private methods)")
    p.add_argument("--sets", help="private sets .npz (private methods)")
    p.add_argument("--pset", help="private set id, e.g. p0 (private methods)")
    p.add_argument("--public", help="public pool .npz (public_lora, pda_dpmd)")
    p.add_argument("--public-lora", help="public LoRA adapter directory (public_ft_dpsgd, pda_dpmd)")
    p.add_argument("--epsilon", nargs="+", default=["inf"],
                   help="target epsilon(s) (DP methods), 'inf' otherwise; one run each")
    p.add_argument("--seed", type=int, default=0, help="experiment seed")
    p.add_argument("--out", nargs="+", required=True, help="output PEFT adapter directory per epsilon")
    p.add_argument("--out-ledger", nargs="+", help="ledger .json per epsilon (every method but public_lora)")
    args = p.parse_args()
    settings = cli.read_settings(args, SECTIONS)
    cfg, lcfg, priv = settings["baselines"], settings["lora"], settings["privacy"]
    log = setup_logging("fit_baseline")
    set_threads(args.threads)
    import math

    import numpy as np

    from dpdeepsets import data, diffusion, dpsgd, lora

    method = args.method
    dp = method in dpsgd.DP_METHODS
    epsilons = [parse_epsilon(e) for e in args.epsilon]
    for text, eps in zip(args.epsilon, epsilons):
        if dp and not math.isfinite(eps):
            raise ValueError(f"{method} needs a finite --epsilon, got {text}")
        if not dp and math.isfinite(eps):
            raise ValueError(f"{method} is not private: use --epsilon inf")
    for flag, needed in (("--private", method != "public_lora"), ("--sets", method != "public_lora"),
                         ("--pset", method != "public_lora"), ("--out-ledger", method != "public_lora"),
                         ("--public", method in ("public_lora", "pda_dpmd")),
                         ("--public-lora", method in dpsgd.PUBLIC_START)):
        if needed and getattr(args, flag[2:].replace("-", "_")) is None:
            raise ValueError(f"{method} needs {flag}")
    ledgers = args.out_ledger if method != "public_lora" else [None] * len(args.out)
    if not len(epsilons) == len(args.out) == len(ledgers):
        raise ValueError(f"{len(epsilons)} --epsilon, {len(args.out)} --out and "
                         f"{len(ledgers)} --out-ledger: give one of each per epsilon")
    if priv["noise"] == "secure" and dp:
        log.info("privacy.noise=secure: opacus secure_mode (needs torchcsprng)")

    device = pick_device()
    public = None
    if args.public:
        public = diffusion.images_to_tensor(data.load_split(args.public)[0])
    extra = {}
    if method == "public_lora":
        images, pset, train_method = public, "public", "nonprivate"
        extra = {"steps": cfg["public_steps"]}
        run_cfg = {**cfg, "batch_size": cfg["public_batch_size"]}
    else:
        index = int(args.pset.lstrip("p"))
        members = np.load(args.sets)["members"]
        if not 0 <= index < len(members):
            raise ValueError(f"private set {args.pset} does not exist ({len(members)} sets)")
        images = diffusion.images_to_tensor(data.load_split(args.private)[0][members[index]])
        pset, train_method, run_cfg = args.pset, method, cfg
    seed = cfg["seed"] * 1_000_003 + args.seed
    public_factors = dpsgd.load_adapter_factors(args.public_lora) if args.public_lora else None
    for text, eps, out, out_ledger in zip(args.epsilon, epsilons, args.out, ledgers):
        # Every run starts from the freshly loaded base model: runs are independent.
        unet, scheduler = diffusion.load_base(args.base)
        unet.to(device)
        targets = lora.find_targets(unet, lcfg["target_modules"], lcfg["rank"])
        basis = lora.make_basis(targets, lcfg["rank"], lcfg["basis_seed"])
        basis = {k: v.to(device) for k, v in basis.items()}
        init = None
        if public_factors is not None:
            a, b = public_factors
            if set(a) != {t.name for t in targets}:
                raise ValueError(f"{args.public_lora}: its target modules differ from lora.target_modules")
            if cfg["parametrisation"] == "gauge_fixed":
                drift = max(float((a[k].to(device) - basis[k]).abs().max()) for k in a)
                if drift > 1e-6:
                    raise ValueError(f"{args.public_lora}: its A is not the gauge-fixed basis "
                                     f"(fitted with another parametrisation or basis_seed)")
            init = ({k: v.to(device) for k, v in a.items()}, {k: v.to(device) for k, v in b.items()})
        log.info("%s on %s: %d images, parametrisation %s, epsilon %s", method, pset,
                 images.shape[0], cfg["parametrisation"], text)
        with Stopwatch(log, f"{method} fit"):
            result = dpsgd.train_lora(
                unet, scheduler, targets, images.to(device), method=train_method, cfg=run_cfg,
                rank=lcfg["rank"], alpha=lcfg["alpha"], basis=basis, init=init,
                epsilon=eps if dp else None, delta=priv["delta"] if dp else None,
                public_images=public, seed=seed, secure=priv["noise"] == "secure",
                device=device, desc=f"{method} {pset} eps{text}", **extra)
        dim = sum(t.out_features * lcfg["rank"] + (t.fan_in * lcfg["rank"]
                                                   if cfg["parametrisation"] == "full" else 0)
                  for t in targets)
        meta = {"method": method, "pset": pset, "epsilon": text, "seed": args.seed,
                "parametrisation": cfg["parametrisation"]}
        ledger = None
        if method != "public_lora":
            ledger = dpsgd.dpsgd_ledger_entry(
                method=method, pset=pset, seed=args.seed, epsilon=eps, delta=priv["delta"],
                n=images.shape[0], dim=dim, cfg=cfg, privacy=result.privacy,
                noise_source="secure" if priv["noise"] == "secure" else f"seeded ({seed})")
            meta.update({k: ledger[k] for k in ("delta", "sigma", "accounted_epsilon")})
        lora.save_peft_adapter(out, targets, result.a, result.b, rank=lcfg["rank"],
                               alpha=lcfg["alpha"], extra_meta=meta)
        if ledger is not None:
            write_json(out_ledger, {"ledger": ledger,
                                    "final_loss": result.losses[-1] if result.losses else None})
            log.info("ledger: %s", {k: ledger[k] for k in ("epsilon", "accounted_epsilon", "sigma",
                                                            "sample_rate", "steps")})
        log.info("wrote adapter %s (%d trainable LoRA parameters)", out, dim)


if __name__ == "__main__":
    cli.run(main)
