#!/usr/bin/env python
"""tune_baselines: choose the gradient-fitted methods' hyperparameters on PUBLIC proxy sets.

A proxy set is one of the disjoint k-NN sets of n images of the held-out public validation
pool, built exactly like the private sets from a pool of the private pool's size (never
seen by the base model, the LoRA bank or the hypernetwork): it plays the part of a private
set at no privacy cost. For one method and one proxy set, every candidate of
``baselines.tuning`` (``grids`` for the DP-SGD methods, ``nonprivate_grids`` for the
non-private references) is fitted at every tuned epsilon (the non-private references: at
epsilon = inf) exactly as fit_baseline fits a private set (the same loop, calibration and
noise, here from a public seed: these fits are never released), sampled by the pipeline's
sampler and scored by its evaluator (FID / KID against the proxy set). Candidates that
differ only in ``ema`` (and, for non-private fits, in ``steps``) are read off one fit. One
CSV row per (epsilon, candidate). ``--method private_evolution`` runs Private Evolution's
candidates (``private_evolution.tuning.grids``) the same way, and ``--method base`` scores
the base model on the proxy (the reference every tuned method should beat).

--choose reads those CSVs and, per (method, epsilon), takes the candidate with the lowest
mean FID over the proxy sets, with a 95 % t-interval over proxies and the number of other
candidates whose paired difference to it is not significant (``tied``: the surface is flat
within them); it writes ``baselines.tuned`` entries for every epsilon of the grid
(results/tuning/chosen.yaml, to paste into the config) and the whole table.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

COMMON = ["privacy", "sampling", "evaluation", "subsets"]
SECTIONS = {"fit_baseline": COMMON + ["baselines", "lora"], "evolve": COMMON + ["private_evolution", "embedder"],
            None: COMMON}  # by the method's producer (None: the base model)


def candidates(cfg: dict, method) -> list[dict]:
    """Every candidate of the method's grids (the union of each grid's product), deduplicated.
    ``cfg``: the baselines section, or the private_evolution section for producer evolve."""
    import itertools

    t = cfg["tuning"]
    grids = t["nonprivate_grids"] if method.privacy == "nonprivate" else t["grids"]
    seen, out = set(), []
    for grid in grids:
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            cand = dict(zip(keys, values))
            key = tuple(sorted(cand.items()))
            if key not in seen:
                seen.add(key)
                out.append(cand)
    return out


def fit_groups(cands: list[dict], dp: bool) -> list[tuple[dict, list[dict]]]:
    """Candidates grouped by the fit they can be read off: same keys but ema (and, without
    DP, steps). Returns [(the group's fit: its longest steps, [candidates])]."""
    free = ("ema",) if dp else ("ema", "steps")
    groups: dict = {}
    for c in cands:
        key = tuple(sorted((k, v) for k, v in c.items() if k not in free))
        groups.setdefault(key, []).append(c)
    out = []
    for key, members in groups.items():
        fit = dict(key)
        if "steps" in members[0]:
            fit["steps"] = max(c["steps"] for c in members)
        out.append((fit, members))
    return out


def tuned_epsilons(cfg_priv: dict, cfg_tuning: dict) -> list[float]:
    eps = cfg_tuning.get("epsilons") or cfg_priv["epsilons"]
    return sorted(float(e) for e in eps)


def tune(args, cfg, log):
    import dataclasses
    import math

    import numpy as np
    import pandas as pd

    from dpdeepsets import baselines, data, diffusion, lora, methods, noise, sampling, scores
    from dpdeepsets.metrics import InceptionFeatures
    from dpdeepsets.seeds import derive_seed
    from dpdeepsets.tables import write_csv

    priv, s = cfg["privacy"], cfg["sampling"]
    method = methods.get(args.method)
    if method.producer not in ("fit_baseline", "evolve", None) or method.bank_recipe:
        raise ValueError(f"{method.name} is not a tuned method (gradient-fitted, Private Evolution) "
                         f"nor the base model")
    device = pick_device()
    val, _ = data.load_split(args.validation, mmap=True)
    images = np.asarray(val[data.private_set_rows(args.sets, args.proxy)])
    x = diffusion.images_to_tensor(images).to(device)
    extractor = InceptionFeatures(device=device, batch_size=cfg["evaluation"]["batch_size"],
                                  runtime=args.inception_runtime, cache_dir=args.inception_cache,
                                  threads=args.threads)
    reference = extractor(images)

    def score(samples) -> dict:
        feats = extractor(samples)
        return {"fid": scores.fid_from_features(feats, reference),
                "kid": scores.kid_from_features(feats, reference)}

    def draw(loras):
        unet, scheduler = diffusion.load_base(args.base)
        unet.to(device)
        return sampling.sample_loras(unet, scheduler, loras, num_samples=s["num_samples"],
                                     steps=s["ddim_steps"], seed=0, batch_size=s["batch_size"],
                                     eta=s["eta"], device=device)

    if method.producer is None:  # the base model: the reference of the proxy
        row = {"method": method.name, "proxy": args.proxy, "epsilon": 0.0, **score(draw(None)[0])}
        log.info("%s", row)
        write_csv(args.out, pd.DataFrame([row]))
        return

    if method.producer == "evolve":
        write_csv(args.out, pd.DataFrame(tune_evolution(args, cfg, method, score, log)))
        return

    b, lcfg = cfg["baselines"], cfg["lora"]
    public = diffusion.images_to_tensor(data.load_split(args.public)[0]) if args.public else None
    init_factors = lora.load_adapter_factors(args.public_lora) if args.public_lora else None
    n = cfg["subsets"]["set_size"]
    dp = method.privacy == "dp_sgd"
    epsilons = tuned_epsilons(priv, b["tuning"]) if dp else [math.inf]
    groups = fit_groups(candidates(b, method), dp)
    log.info("%s on %s: %d candidates in %d fits per epsilon, epsilons %s", method.name,
             args.proxy, sum(len(m) for _, m in groups), len(groups), epsilons)
    rows = []
    for eps in epsilons:
        fitted, cands = [], []
        for fit, members in groups:
            hyper = dataclasses.replace(baselines.hyperparameters(b, method.name, eps),
                                        source="tuning candidate", **fit)
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
                src = noise.PublicSeedNoise(derive_seed(b["seed"], "tuning", method.name, args.proxy,
                                                        eps, str(sorted(fit.items()))))
            steps_at = sorted({int(c.get("steps", hyper.steps)) for c in members})
            emas = sorted({float(c.get("ema", hyper.ema)) for c in members})
            with Stopwatch(log, f"{method.name} {args.proxy} eps {eps:g} fit {fit} -> {len(members)} candidates"):
                res = baselines.fit_lora(
                    unet, scheduler, targets, x, method=method, hyper=hyper, rank=lcfg["rank"],
                    alpha=lcfg["alpha"], parametrisation=b["parametrisation"], basis=basis, init=init,
                    dp=plan, noise=src, public_images=public, public_batch_size=b["pda_public_batch_size"],
                    grad_sample_mode=b["grad_sample_mode"],
                    draws_seed=derive_seed(b["seed"], "tuning-draws", method.name, args.proxy,
                                           str(sorted(fit.items()))),
                    device=device, desc=f"tune {method.name} eps{eps:g}",
                    variant_emas=emas, variants_at=steps_at)
            for c in members:
                a_f, b_f = res.variants[(int(c.get("steps", hyper.steps)), float(c.get("ema", hyper.ema)))]
                fitted.append((a_f, b_f, lcfg["alpha"] / lcfg["rank"]))
                cands.append({**fit, **c})
        for cand, samples in zip(cands, draw(fitted)):
            rows.append({"method": method.name, "proxy": args.proxy, "epsilon": eps, **cand,
                         **score(samples)})
            log.info("%s", rows[-1])
    write_csv(args.out, pd.DataFrame(rows))


def tune_evolution(args, cfg, method, score, log) -> list[dict]:
    """Private Evolution's candidates on one proxy set: the same mechanism and calibration as
    rule private_evolution, with noise from a public seed (public data, never released)."""
    import dataclasses

    from dpdeepsets import data, diffusion, noise, privacy
    from dpdeepsets import private_evolution as PE
    from dpdeepsets.seeds import derive_seed

    pe, priv, s = cfg["private_evolution"], cfg["privacy"], cfg["sampling"]
    if not (args.embeddings and args.projection):
        raise ValueError("tuning private_evolution needs --embeddings and --projection")
    device = pick_device()
    proxy = data.load_embeddings(args.embeddings)[data.private_set_rows(args.sets, args.proxy)]
    embed = _embed_fn(args.projection, cfg["embedder"])
    unet, scheduler = diffusion.load_base(args.base)
    unet.to(device)
    rows = []
    for eps in tuned_epsilons(priv, pe["tuning"]):
        base_params, _ = PE.params_for({**pe, "tuned": []}, eps, s["ddim_steps"], s["num_samples"])
        for cand in candidates(pe, method):
            params = dataclasses.replace(base_params, **cand)
            sigma = privacy.pe_histogram_sigma(eps, priv["delta"], params.iterations, priv["adjacency"])
            src = noise.PublicSeedNoise(derive_seed(0, "tuning", method.name, args.proxy, eps,
                                                    str(sorted(cand.items()))))
            with Stopwatch(log, f"PE {args.proxy} eps {eps:g} {cand}"):
                population, _ = PE.private_evolution(
                    proxy, unet=unet, scheduler=scheduler, embed=embed, params=params, sigma=sigma,
                    noise_source=src, seed=0, device=device, batch_size=s["batch_size"],
                    desc=f"tune PE {args.proxy} eps{eps:g}")
            rows.append({"method": method.name, "proxy": args.proxy, "epsilon": eps, **cand,
                         **score(population[: s["num_samples"]])})
            log.info("%s", rows[-1])
    return rows


def _embed_fn(projection_path: str, embedder_settings: dict):
    from dpdeepsets import embedder

    proj = embedder.Projection.load(projection_path)
    return lambda images: proj.transform(embedder.features_from_config(images, embedder_settings))


def choose_table(df, params: list[str]):
    """Per (method, epsilon, candidate): mean proxy FID / KID, a 95 % t-interval over proxies,
    and whether it is the chosen one; ``tied`` counts the candidates whose paired FID difference
    to the chosen one (over the same proxies) has a 95 % t-interval that contains 0."""
    import math

    import pandas as pd

    from dpdeepsets.tables import t_interval

    rows = []
    for (method, eps), g in df.groupby(["method", "epsilon"], sort=False):
        per = {}
        for key, c in g.groupby(params, dropna=False, sort=False):
            per[key if isinstance(key, tuple) else (key,)] = c.set_index("proxy")
        stats = {k: t_interval(v["fid"].to_numpy()) for k, v in per.items()}
        best = min(stats, key=lambda k: stats[k][0])
        for k, v in per.items():
            m, lo, hi = stats[k]
            common = v.index.intersection(per[best].index)
            d, dlo, dhi = t_interval((v.loc[common, "fid"] - per[best].loc[common, "fid"]).to_numpy())
            rows.append({"method": method, "epsilon": eps, **dict(zip(params, k)),
                         "proxy_fid": m, "proxy_fid_lo": lo, "proxy_fid_hi": hi,
                         "proxy_kid": float(v["kid"].mean()), "proxies": len(v),
                         "minus_chosen": d, "minus_chosen_lo": dlo, "minus_chosen_hi": dhi,
                         "tied_with_chosen": bool(k != best and not math.isnan(dlo) and dlo <= 0),
                         "chosen": k == best})
    return pd.DataFrame(rows)


def choose(args, log):
    import json

    import pandas as pd
    import yaml

    from dpdeepsets import private_evolution as PE
    from dpdeepsets.baselines import HYPER_KEYS
    from dpdeepsets.io import atomic_path
    from dpdeepsets.tables import write_csv

    df = pd.concat([pd.read_csv(f) for f in args.choose], ignore_index=True)
    base = df[df["method"] == "base"]
    df = df[df["method"] != "base"]
    sections = {"private_evolution": ("private_evolution", PE.KNOBS)}  # else baselines, HYPER_KEYS
    grid = [float(e) for e in json.loads(args.epsilons)] if args.epsilons else []
    tables, entries = [], {"baselines": [], "private_evolution": []}
    for method, dm in df.groupby("method", sort=False):
        section, keys = sections.get(method, ("baselines", HYPER_KEYS))
        params = [c for c in keys if c in dm and dm[c].notna().any()]  # the keys an entry may set
        dm = dm.copy()
        dm[params] = dm[params].astype(object).fillna(-1)  # -1: not a key of this candidate
        tables.append(choose_table(dm, params))
        entries[section] += _entries(tables[-1], method, params, grid, _provenance(tables[-1]))
    table = pd.concat(tables, ignore_index=True)
    write_csv(args.out_table, table)
    tuned_for = json.loads(args.tuned_for) if args.tuned_for else None  # the settings tuned at
    header = ["# baselines.tuned and private_evolution.tuned, chosen on public proxy sets "
              "(snakemake tune_baselines)"]
    if len(base):
        bf = base.groupby("proxy")["fid"].mean()
        header.append(f"# base model on the proxy sets: FID {bf.mean():.2f} (per proxy "
                      f"{', '.join(f'{p} {v:.1f}' for p, v in bf.items())})")
    doc = {"baselines": {"tuned_for": tuned_for, "tuned": entries["baselines"]},
           "private_evolution": {"tuned": entries["private_evolution"]}}
    with atomic_path(args.out_chosen) as tmp:
        tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, width=200))
    for e in entries["baselines"] + entries["private_evolution"]:
        log.info("%s", e)
    log.info("chose %d entries -> %s", sum(map(len, entries.values())), args.out_chosen)


def _provenance(table) -> str:
    import datetime
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    return f"tune_baselines {datetime.date.today()} at {commit}, {int(table.proxies.max())} proxy sets"


CONVERT = {"lr": float, "momentum": float, "max_grad_norm": float, "optimizer": str, "ema": float,
           "weight_decay": float, "threshold": float, "strength_start": float, "strength_end": float,
           "schedule": str}


def _entries(table, method: str, params: list[str], grid: list[float], provenance: str) -> list[dict]:
    """One tuned entry per epsilon of the grid (inf for a non-private reference; without a
    grid, per tuned epsilon): the chosen candidate at that epsilon, or at the nearest tuned one
    (in log epsilon; the provenance names it). A tuned epsilon outside the grid gets no entry:
    the config carries exactly the cells it runs."""
    import math

    chosen = table[table["chosen"]]
    by_eps = {float(r["epsilon"]): r for _, r in chosen.iterrows()}
    targets = [math.inf] if math.isinf(next(iter(by_eps))) else sorted(set(grid) or set(by_eps))
    out = []
    for eps in targets:
        near = min(by_eps, key=lambda e: abs(math.log(e) - math.log(eps)) if math.isfinite(e) else 0)
        best = by_eps[near]
        entry = {"method": method, "epsilon": "inf" if math.isinf(eps) else float(eps)}
        entry.update({k: CONVERT.get(k, int)(best[k]) for k in params if best[k] != -1})
        tied = table[table["epsilon"] == near]["tied_with_chosen"]
        entry.update({"proxy_fid": round(float(best["proxy_fid"]), 2),
                      "proxy_fid_lo": round(float(best["proxy_fid_lo"]), 2),
                      "proxy_fid_hi": round(float(best["proxy_fid_hi"]), 2),
                      "tied": int(tied.sum()),
                      "provenance": provenance + ("" if near == eps else
                                                  f"; tuned at epsilon {near:g}, the nearest tuned")})
        out.append(entry)
    return out


def main():
    p = cli.make_parser(__doc__, sorted({x for v in SECTIONS.values() for x in v}))
    p.add_argument("--method", help="a tuned method of the registry (gradient-fitted, private_evolution), or base")
    p.add_argument("--proxy", help="proxy set id, e.g. q0")
    p.add_argument("--base", help="base model directory")
    p.add_argument("--validation", help="public validation pool .npz")
    p.add_argument("--sets", help="proxy sets .npz (subsets of the validation pool)")
    p.add_argument("--public", help="public pool .npz (public_gradient methods)")
    p.add_argument("--public-lora", help="public-pool LoRA (public_start methods)")
    p.add_argument("--embeddings", help="validation embeddings .npy (private_evolution)")
    p.add_argument("--projection", help="the embedder's projection .npz (private_evolution)")
    p.add_argument("--inception-runtime", default="torch")
    p.add_argument("--inception-cache")
    p.add_argument("--out", help="the candidates' scores .csv")
    p.add_argument("--choose", nargs="+", help="score .csv files: choose instead of tune")
    p.add_argument("--out-chosen", help="chosen tuned entries .yaml (--choose)")
    p.add_argument("--tuned-for", help="JSON: the settings the candidates were scored at "
                                       "(baselines.tuned_for; --choose)")
    p.add_argument("--epsilons", help="JSON: privacy.epsilons, every one gets an entry (--choose)")
    p.add_argument("--out-table", help="mean proxy scores of every candidate .csv (--choose)")
    args = p.parse_args()
    log = setup_logging("tune_baselines")
    if args.choose:
        choose(args, log)
        return
    for flag in ("method", "proxy", "base", "validation", "sets", "out"):
        if getattr(args, flag) is None:
            raise ValueError(f"tuning needs --{flag}")
    from dpdeepsets import methods

    cfg = cli.read_settings(args, SECTIONS[methods.get(args.method).producer])
    set_threads(args.threads)
    tune(args, cfg, log)


if __name__ == "__main__":
    cli.run(main)
