#!/usr/bin/env python
"""evaluate: FID and KID of generated samples against one private set (clean-fid, pool3).

One cell per (--samples, --epsilon, --out) triple; several cells of one method, private set
and seed (its epsilon grid) share one process and one loaded Inception network.
"""

from dpdeepsets import cli
from dpdeepsets.io import pick_device, set_threads, setup_logging, write_json

SECTIONS = ["evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--samples", nargs="+", required=True, help="samples .npz, one per cell")
    p.add_argument("--reference", required=True, help="reference features .npz")
    p.add_argument("--method", required=True)
    p.add_argument("--pset", required=True)
    p.add_argument("--epsilon", nargs="+", required=True, help="the cells' epsilons, in --samples order")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", nargs="+", required=True, help="metrics .json, one per cell")
    args = p.parse_args()
    if not len(args.samples) == len(args.epsilon) == len(args.out):
        raise ValueError(f"{len(args.samples)} --samples, {len(args.epsilon)} --epsilon and "
                         f"{len(args.out)} --out: give one of each per cell")
    ev = cli.read_settings(args, SECTIONS)["evaluation"]
    log = setup_logging("evaluate")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets.data import load_split
    from dpdeepsets.metrics import InceptionFeatures, fid_from_features, kid_from_features

    ref = np.load(args.reference)["features"]
    extractor = InceptionFeatures(device=pick_device(), batch_size=ev["batch_size"])
    for path, epsilon, out in zip(args.samples, args.epsilon, args.out):
        samples, _ = load_split(path)
        feats = extractor(samples)
        row = {"method": args.method, "pset": args.pset, "epsilon": epsilon, "seed": args.seed,
               "fid": fid_from_features(feats, ref), "kid": kid_from_features(feats, ref),
               # No timing here: metrics must be reproducible; the job's time is in its benchmark.
               "n_samples": len(samples), "n_reference": len(ref)}
        if not (np.isfinite(row["fid"]) and np.isfinite(row["kid"])):
            raise ValueError(f"non-finite metric for {path}: {row}")
        write_json(out, row)
        log.info("%s %s eps=%s seed=%d: FID %.2f KID %.4f", args.method, args.pset, epsilon,
                 args.seed, row["fid"], row["kid"])


if __name__ == "__main__":
    cli.run(main)
