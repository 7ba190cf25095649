#!/usr/bin/env python
"""build_subsets: k-NN sets around seeded anchors in one pool's embedding space."""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

SECTIONS = ["subsets"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="embeddings .npy of the pool")
    p.add_argument("--pool", required=True, choices=["public", "private"])
    p.add_argument("--out", required=True, help="subsets .npz (anchors, members)")
    args = p.parse_args()
    s = cli.read_settings(args, SECTIONS)["subsets"]
    log = setup_logging("build_subsets")
    import numpy as np

    from dpdeepsets.data import atomic_savez, load_embeddings
    from dpdeepsets.subsets import knn_subsets

    z = load_embeddings(args.embeddings)  # refuses NaN/Inf, names the file
    num = s["num_public"] if args.pool == "public" else s["num_private"]
    seed = s["seed"] + (0 if args.pool == "public" else 1)
    anchors, members = knn_subsets(z, num_sets=num, k=s["set_size"], seed=seed,
                                   what=f"{args.pool} pool")
    atomic_savez(args.out, {"anchors": anchors, "members": members})
    log.info("wrote %d %s sets of %d -> %s", num, args.pool, s["set_size"], args.out)


if __name__ == "__main__":
    cli.run(main)
