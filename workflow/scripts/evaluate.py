#!/usr/bin/env python
"""evaluate: FID and KID of one cell's samples against its private set (clean-fid, pool3)."""

from dpdeepsets import cli
from dpdeepsets.io import pick_device, set_threads, setup_logging, write_json

SECTIONS = ["evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--samples", required=True, help="samples .npz")
    p.add_argument("--reference", required=True, help="reference features .npz")
    p.add_argument("--method", required=True)
    p.add_argument("--pset", required=True)
    p.add_argument("--epsilon", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="metrics .json")
    args = p.parse_args()
    ev = cli.read_settings(args, SECTIONS)["evaluation"]
    log = setup_logging("evaluate")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets.data import load_split
    from dpdeepsets.metrics import InceptionFeatures, fid_from_features, kid_from_features

    samples, _ = load_split(args.samples)
    ref = np.load(args.reference)["features"]
    feats = InceptionFeatures(device=pick_device(), batch_size=ev["batch_size"])(samples)
    row = {"method": args.method, "pset": args.pset, "epsilon": args.epsilon, "seed": args.seed,
           "fid": fid_from_features(feats, ref), "kid": kid_from_features(feats, ref),
           # No timing here: metrics must be reproducible; the job's time is in its benchmark.
           "n_samples": len(samples), "n_reference": len(ref)}
    if not (np.isfinite(row["fid"]) and np.isfinite(row["kid"])):
        raise ValueError(f"non-finite metric for {args.samples}: {row}")
    write_json(args.out, row)
    log.info("%s %s eps=%s seed=%d: FID %.2f KID %.4f", args.method, args.pset, args.epsilon,
             args.seed, row["fid"], row["kid"])


if __name__ == "__main__":
    cli.run(main)
