#!/usr/bin/env python
"""Where Private Evolution's gain comes from: its votes, or its variation API? (public data only)

    python benchmarks/pe_control.py [RESULTS] [--configfile config/config.yaml]
        [--proxies q0 q1 q2 q3] [--epsilon 1] [--threads 2] [--log benchmarks/results/pe_control.log]

On the public proxy sets that `tune_baselines` uses (k-NN sets of the held-out public
validation pool, built like the private sets), with the base model of RESULTS and the
config's (tuned) Private Evolution knobs at --epsilon, scores against each proxy set:

- ``pe``          Private Evolution as the pipeline runs it: the proxy's votes, the noisy
                  histogram at the calibrated sigma (noise from a public seed: public data);
- ``pe_no_votes`` the same loop with an EMPTY private set: every vote count is 0, so every
                  resampling step is uniform. The output is what Private Evolution's random and
                  variation APIs make without any information about the set;
- ``pe_exact``    the same loop with the proxy's votes and no noise (sigma 0; NOT private);
- ``base``        the base model's DDIM samples (the `base` method).

Prints FID per proxy and the paired differences over proxies with 95 % Student-t intervals.
If ``pe`` and ``pe_no_votes`` tie while both beat ``base``, the gain comes from the variation
API (a change of the sampler), not from the private data.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from _header import log_header, print_log  # benchmarks/_header.py: command, commit, date; atomic log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    p.add_argument("--proxies", nargs="+", default=["q0", "q1", "q2", "q3"])
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)

    import pandas as pd

    from dpdeepsets import data, diffusion, embedder, noise, privacy, scores
    from dpdeepsets import private_evolution as PE
    from dpdeepsets.config import load_config
    from dpdeepsets.io import set_threads
    from dpdeepsets.metrics import InceptionFeatures
    from dpdeepsets.seeds import derive_seed
    from dpdeepsets.tables import t_interval

    res = Path(args.results)
    need = {"base": res / "base", "validation": res / "data" / "validation.npz",
            "sets": res / "subsets" / "validation.npz", "embeddings": res / "embeddings" / "validation.npy",
            "projection": res / "embedder" / "projection.npz"}
    for what, path in need.items():
        if not path.exists():
            sys.exit(f"error: {path} ({what}) does not exist; run the pipeline (make run) first")
    set_threads(args.threads)
    cfg = load_config(args.configfile)
    s, pr = cfg["sampling"], cfg["privacy"]
    params, source = PE.params_for(cfg["private_evolution"], args.epsilon, s["ddim_steps"], s["num_samples"])
    sigma = privacy.pe_histogram_sigma(args.epsilon, pr["delta"], params.iterations, pr["adjacency"])
    proj = embedder.Projection.load(str(need["projection"]))

    def embed(images):
        return proj.transform(embedder.features_from_config(images, cfg["embedder"]))

    unet, scheduler = diffusion.load_base(str(need["base"]))
    extractor = InceptionFeatures(device="cpu", batch_size=cfg["evaluation"]["batch_size"],
                                  runtime=cfg["evaluation"]["inception_runtime"],
                                  cache_dir=str(res / "cache" / "inception"), threads=args.threads)
    val, _ = data.load_split(str(need["validation"]), mmap=True)
    emb_all = data.load_embeddings(str(need["embeddings"]))
    rows = []
    for q in args.proxies:
        idx = data.private_set_rows(str(need["sets"]), q)
        reference = extractor(np.asarray(val[idx]))
        votes = np.asarray(emb_all[idx])

        def fid(samples):
            return scores.fid_from_features(extractor(samples[: s["num_samples"]]), reference)

        def run(private, sig, label):
            src = noise.PublicSeedNoise(derive_seed(0, "pe-control", q, label))
            pop, _ = PE.private_evolution(private, unet=unet, scheduler=scheduler, embed=embed,
                                          params=params, sigma=sig, noise_source=src, seed=0,
                                          batch_size=s["batch_size"], desc=f"{label} {q}")
            return pop

        base = PE.random_api(unet, scheduler, num_samples=s["num_samples"], steps=s["ddim_steps"],
                             seed=0, batch_size=s["batch_size"], desc=f"base {q}")
        row = {"proxy": q, "base": fid(base),
               "pe": fid(run(votes, sigma, "pe")),
               "pe_no_votes": fid(run(votes[:0], 0.0, "pe_no_votes")),
               "pe_exact": fid(run(votes, 0.0, "pe_exact"))}
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows).set_index("proxy")
    lines = log_header(__file__, argv) + [
        f"config {' '.join(args.configfile)}; results {res}; Private Evolution at epsilon {args.epsilon:g}: "
        f"{dataclasses.asdict(params)} ({source}); sigma per histogram {sigma:.4g}; "
        f"{s['num_samples']} samples per cell, FID against each public proxy set of "
        f"{cfg['subsets']['set_size']} images", "",
        "FID per proxy", df.to_string(float_format=lambda v: f"{v:.1f}"), "",
        f"paired differences over {len(df)} proxies: mean [95 % Student-t interval]"]
    for a, b in [("pe", "base"), ("pe_no_votes", "base"), ("pe", "pe_no_votes"), ("pe_exact", "pe_no_votes"),
                 ("pe", "pe_exact")]:
        m, lo, hi = t_interval((df[a] - df[b]).to_numpy())
        lines.append(f"  {a:>12} - {b:<12} {m:+7.1f} [{lo:+.1f}, {hi:+.1f}]")
    print_log(lines, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
