#!/usr/bin/env python
"""tune_baselines: choose the gradient-fitted methods' hyperparameters on PUBLIC proxy sets.

A proxy set is a k-NN set of n images of the held-out public validation pool (never seen by
the base model, the LoRA bank or the hypernetwork): it plays the part of a private set at no
privacy cost. For one method and one proxy set, every candidate of ``baselines.tuning`` is
fitted at every epsilon of ``privacy.epsilons`` (the nonprivate reference: at epsilon = inf,
with ``tuning.nonprivate_steps``) exactly as fit_baseline fits a private set (the same loop,
calibration and noise, here from a public seed: these fits are never released), sampled by the
pipeline's sampler and scored by its evaluator (FID / KID against the proxy set). One CSV
row per (epsilon, candidate).

--choose reads those CSVs, averages the FID over proxy sets and writes, per (method,
epsilon), the best candidate as a ``baselines.tuned`` entry (results/tuning/chosen.yaml, to
paste into the config) and the whole table.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["baselines", "lora", "privacy", "sampling", "evaluation", "subsets"]


def _candidates(cfg: dict, method) -> list[dict]:
    import itertools

    t = cfg["tuning"]
    if method.privacy == "nonprivate":  # SGD on the lr grid, and Adam on its own lr grid
        keys = {"lr": t["lr"], "steps": t["nonprivate_steps"], "batch_size": t["batch_size"],
                "noise_multiplicity": t["noise_multiplicity"]}
        names = list(keys)
        sgd = [dict(zip(names, v), optimizer="sgd") for v in itertools.product(*keys.values())]
        adam = [dict(zip(names, v), optimizer="adam")
                for v in itertools.product(*{**keys, "lr": t.get("nonprivate_adam_lr", [])}.values())]
        return sgd + adam
    else:
        keys = {k: t[k] for k in ("lr", "steps", "max_grad_norm", "batch_size", "noise_multiplicity")}
    names = list(keys)
    return [dict(zip(names, values)) for values in itertools.product(*keys.values())]


def tune(args, cfg, log):
    import dataclasses
    import math

    import numpy as np
    import pandas as pd

    from dpdeepsets import baselines, data, diffusion, lora, methods, noise, sampling, scores
    from dpdeepsets.metrics import InceptionFeatures
    from dpdeepsets.seeds import derive_seed
    from dpdeepsets.tables import write_csv

    b, lcfg, priv, s = cfg["baselines"], cfg["lora"], cfg["privacy"], cfg["sampling"]
    method = methods.get(args.method)
    if method.producer != "fit_baseline":
        raise ValueError(f"{method.name} is not a gradient-fitted method")
    device = pick_device()
    val, _ = data.load_split(args.validation, mmap=True)
    images = np.asarray(val[data.private_set_rows(args.sets, args.proxy)])
    x = diffusion.images_to_tensor(images).to(device)
    public = diffusion.images_to_tensor(data.load_split(args.public)[0]) if args.public else None
    init_factors = lora.load_adapter_factors(args.public_lora) if args.public_lora else None
    extractor = InceptionFeatures(device=device, batch_size=cfg["evaluation"]["batch_size"],
                                  runtime=args.inception_runtime, cache_dir=args.inception_cache,
                                  threads=args.threads)
    reference = extractor(images)
    n = cfg["subsets"]["set_size"]
    dp = method.privacy == "dp_sgd"
    epsilons = [float(e) for e in priv["epsilons"]] if dp else [math.inf]
    rows = []
    for eps in epsilons:
        fitted, cands = [], _candidates(b, method)
        for cand in cands:
            hyper = dataclasses.replace(baselines.hyperparameters(b, method.name, eps),
                                        source="tuning candidate", **cand)
            unet, scheduler = diffusion.load_base(args.base)
            unet.to(device)
            targets = lora.find_targets(unet, lcfg["target_modules"], lcfg["rank"])
            basis = {k: v.to(device) for k, v in lora.make_basis(targets, lcfg["rank"], lcfg["basis_seed"]).items()}
            init = None
            if init_factors is not None:
                init = tuple({k: v.to(device) for k, v in f.items()} for f in init_factors)
            plan = src = None
            if dp:
                plan = baselines.plan_dp(hyper, n=n, epsilon=eps, delta=priv["delta"],
                                         accountant=b["accountant"], prv_max_epsilon=b["prv_max_epsilon"])
                src = noise.PublicSeedNoise(derive_seed(b["seed"], "tuning", method.name, args.proxy, eps, str(cand)))
            with Stopwatch(log, f"{method.name} {args.proxy} eps {eps:g} {cand}"):
                res = baselines.fit_lora(
                    unet, scheduler, targets, x, method=method, hyper=hyper, rank=lcfg["rank"],
                    alpha=lcfg["alpha"], parametrisation=b["parametrisation"], basis=basis, init=init,
                    dp=plan, noise=src, public_images=public, public_batch_size=b["pda_public_batch_size"],
                    grad_sample_mode=b["grad_sample_mode"],
                    draws_seed=derive_seed(b["seed"], "tuning-draws", method.name, args.proxy, str(cand)),
                    device=device, desc=f"tune {method.name} eps{eps:g}")
            fitted.append((res.a, res.b, lcfg["alpha"] / lcfg["rank"]))
        unet, scheduler = diffusion.load_base(args.base)
        unet.to(device)
        cells = sampling.sample_loras(unet, scheduler, fitted, num_samples=s["num_samples"],
                                      steps=s["ddim_steps"], seed=0, batch_size=s["batch_size"],
                                      eta=s["eta"], device=device)
        for cand, samples in zip(cands, cells):
            feats = extractor(samples)
            rows.append({"method": method.name, "proxy": args.proxy, "epsilon": eps, **cand,
                         "fid": scores.fid_from_features(feats, reference),
                         "kid": scores.kid_from_features(feats, reference)})
            log.info("%s", rows[-1])
    write_csv(args.out, pd.DataFrame(rows))


def choose(args, log):
    import datetime
    import math
    import subprocess

    import pandas as pd
    import yaml

    from dpdeepsets.tables import write_csv

    df = pd.concat([pd.read_csv(f) for f in args.choose], ignore_index=True)
    from dpdeepsets.baselines import HYPER_KEYS

    params = [c for c in HYPER_KEYS if c in df]  # the keys a baselines.tuned entry may set
    df[params] = df[params].astype(object).fillna(-1)  # -1: not a key of this method
    table = (df.groupby(["method", "epsilon", *params]).agg(proxy_fid=("fid", "mean"),
                                                            proxy_kid=("kid", "mean"),
                                                            proxies=("proxy", "nunique"))
             .reset_index())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    provenance = f"tune_baselines {datetime.date.today()} at {commit}, {int(table.proxies.max())} proxy sets"
    import json

    tuned_for = json.loads(args.tuned_for) if args.tuned_for else None  # the settings tuned at
    entries = []
    for (method, eps), g in table.groupby(["method", "epsilon"], sort=False):
        best = g.loc[g["proxy_fid"].idxmin()]
        entry = {"method": method, "epsilon": "inf" if math.isinf(eps) else float(eps)}
        convert = {"lr": float, "momentum": float, "max_grad_norm": float, "optimizer": str}
        entry.update({k: convert.get(k, int)(best[k]) for k in params if best[k] != -1})
        entry.update({"proxy_fid": round(float(best["proxy_fid"]), 2), "provenance": provenance})
        entries.append(entry)
        table.loc[g.index, "chosen"] = g.index == g["proxy_fid"].idxmin()
    write_csv(args.out_table, table)
    from dpdeepsets.io import atomic_path

    with atomic_path(args.out_chosen) as tmp:
        tmp.write_text("# baselines.tuned, chosen on public proxy sets (snakemake tune_baselines)\n"
                       + yaml.safe_dump({"baselines": {"tuned_for": tuned_for, "tuned": entries}},
                                        sort_keys=False))
    log.info("chose %d entries -> %s", len(entries), args.out_chosen)


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--method", help="a gradient-fitted method of the registry")
    p.add_argument("--proxy", help="proxy set id, e.g. q0")
    p.add_argument("--base", help="base model directory")
    p.add_argument("--validation", help="public validation pool .npz")
    p.add_argument("--sets", help="proxy sets .npz (subsets of the validation pool)")
    p.add_argument("--public", help="public pool .npz (public_gradient methods)")
    p.add_argument("--public-lora", help="public-pool LoRA (public_start methods)")
    p.add_argument("--inception-runtime", default="torch")
    p.add_argument("--inception-cache")
    p.add_argument("--out", help="the candidates' scores .csv")
    p.add_argument("--choose", nargs="+", help="score .csv files: choose instead of tune")
    p.add_argument("--out-chosen", help="chosen baselines.tuned entries .yaml (--choose)")
    p.add_argument("--tuned-for", help="JSON: the settings the candidates were scored at "
                                       "(baselines.tuned_for; --choose)")
    p.add_argument("--out-table", help="mean proxy scores of every candidate .csv (--choose)")
    args = p.parse_args()
    log = setup_logging("tune_baselines")
    if args.choose:
        choose(args, log)
        return
    cfg = cli.read_settings(args, SECTIONS)
    set_threads(args.threads)
    for flag in ("method", "proxy", "base", "validation", "sets", "out"):
        if getattr(args, flag) is None:
            raise ValueError(f"tuning needs --{flag}")
    tune(args, cfg, log)


if __name__ == "__main__":
    cli.run(main)
