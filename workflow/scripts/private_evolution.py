#!/usr/bin/env python
"""private_evolution: Private Evolution's samples for one private set, at every finite epsilon.

The training-free peer (dpdeepsets.private_evolution; Lin et al., ICLR 2024): the base model's
DDIM samples (random API) are evolved by T rounds of noisy nearest-neighbour votes of the
private set in the public-only embedder's space, resampling and SDEdit variations (variation
API). A DP step: it reads the private set's embeddings; its only private output is the T noisy
vote histograms, Gaussian noise from the secret key per (set, epsilon, seed, iteration),
calibrated by dpdeepsets.privacy.pe_histogram_sigma and accounted as Gaussian DP. It writes
what the sample rule writes for other methods (samples, grid, features) and a ledger entry
per epsilon; nothing computed from the noise-free histogram is logged or stored.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging, write_json

SECTIONS = ["private_evolution", "privacy", "sampling", "evaluation", "embedder"]


def make_embed(projection_path: str, embedder_settings: dict):
    """The public-only embedder as a function of uint8 images (the space the private set's
    embeddings live in)."""
    from dpdeepsets import embedder

    proj = embedder.Projection.load(projection_path)
    return lambda images: proj.transform(embedder.features_from_config(images, embedder_settings))


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--embeddings", required=True, help="private embeddings .npy")
    p.add_argument("--sets", required=True, help="private sets .npz")
    p.add_argument("--pset", required=True, help="private set id, e.g. p0")
    p.add_argument("--n", type=int, required=True, help="the public set size n (subsets.set_size)")
    p.add_argument("--projection", required=True, help="the embedder's projection .npz (public)")
    p.add_argument("--key", help="the secret noise key (privacy.noise=keyed)")
    p.add_argument("--classifier", help="digit classifier .npz (fit_digit_classifier)")
    p.add_argument("--tuned", help="results/tuning/chosen.yaml: use its tuned values "
                                   "(baselines.tuning.auto: tuned on this config's public proxies)")
    p.add_argument("--inception-runtime", default="torch")
    p.add_argument("--inception-cache")
    p.add_argument("--epsilon", nargs="+", required=True, help="finite target epsilons, one cell each")
    p.add_argument("--seed", type=int, required=True, help="experiment replicate (public randomness)")
    p.add_argument("--out", nargs="+", required=True, help="samples .npz per epsilon")
    p.add_argument("--out-grid", nargs="+", required=True, help="sample grid .png per epsilon")
    p.add_argument("--out-features", nargs="+", required=True, help="features .npz per epsilon")
    p.add_argument("--out-ledger", nargs="+", required=True, help="ledger .json per epsilon")
    args = p.parse_args()
    if not len(args.epsilon) == len(args.out) == len(args.out_grid) == len(args.out_features) == len(args.out_ledger):
        raise ValueError("give one --out, --out-grid, --out-features and --out-ledger per --epsilon")
    cfg = cli.read_settings(args, SECTIONS)
    pe, priv, s, ev = cfg["private_evolution"], cfg["privacy"], cfg["sampling"], cfg["evaluation"]
    if args.tuned:  # baselines.tuning.auto: the values tune_baselines chose for this config
        from dpdeepsets.config import read_tuned

        pe["tuned"] = read_tuned(args.tuned, "private_evolution")
    log = setup_logging("private_evolution")
    set_threads(args.threads)
    import math

    from dpdeepsets import classifier, diffusion, noise, privacy, sampling
    from dpdeepsets import private_evolution as PE
    from dpdeepsets.data import load_embeddings, private_set_rows
    from dpdeepsets.io import parse_epsilon
    from dpdeepsets.metrics import InceptionFeatures

    device = pick_device()
    private = load_embeddings(args.embeddings)[private_set_rows(args.sets, args.pset)]
    embed = make_embed(args.projection, cfg["embedder"])
    extractor = InceptionFeatures(device=device, batch_size=ev["batch_size"],
                                  runtime=args.inception_runtime, cache_dir=args.inception_cache,
                                  threads=args.threads)
    labeller = classifier.load(args.classifier) if args.classifier else None
    unet, scheduler = diffusion.load_base(args.base)  # read only: PE changes no weight
    unet.to(device)
    for text, out, grid, feat, out_ledger in zip(args.epsilon, args.out, args.out_grid,
                                                 args.out_features, args.out_ledger):
        eps = parse_epsilon(text)
        if not math.isfinite(eps):
            raise ValueError(f"private_evolution needs a finite --epsilon, got {text}")
        params, source = PE.params_for(pe, eps, s["ddim_steps"], s["num_samples"])
        if params.population < s["num_samples"]:
            raise ValueError(f"private_evolution.population={params.population} is smaller than "
                             f"sampling.num_samples={s['num_samples']}: every cell is scored on "
                             f"the same number of samples")
        sigma = privacy.pe_histogram_sigma(eps, priv["delta"], params.iterations, priv["adjacency"])
        src = noise.noise_source(priv["noise"], args.key, noise.cell_identity(
            mechanism="private_evolution", pset=args.pset, epsilon=eps, seed=args.seed))
        with Stopwatch(log, f"private_evolution {args.pset} eps {text}: N={params.population}, "
                            f"T={params.iterations}, sigma={sigma:.4g} ({source})"):
            population, stats = PE.private_evolution(
                private, unet=unet, scheduler=scheduler, embed=embed, params=params, sigma=sigma,
                noise_source=src, seed=args.seed, device=device, batch_size=s["batch_size"],
                desc=f"PE {args.pset} eps{text}")
        images = population[: s["num_samples"]]  # S_T is exchangeable: any num_samples of it
        sampling.write_cells([images], [out], [grid], [feat], extractor=extractor, labeller=labeller,
                             grid_size=s["grid_size"], log=log)
        ledger = PE.ledger_entry(pset=args.pset, seed=args.seed, epsilon=eps, delta=priv["delta"],
                                 adjacency=priv["adjacency"], n=args.n, params=params, noise=src,
                                 source=source)
        public_stats = [{k: v for k, v in st.items() if k != "parents"} for st in stats]
        write_json(out_ledger, {"ledger": ledger, "iterations": public_stats})
        log.info("%s eps %s: epsilon %.4g accounted (sigma %.4g per histogram, %s noise)", args.pset,
                 text, ledger["accounted_epsilon"], sigma, ledger["noise_source"])


if __name__ == "__main__":
    cli.run(main)
