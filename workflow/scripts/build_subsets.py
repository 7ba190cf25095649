#!/usr/bin/env python
"""build_subsets: k-NN sets around seeded anchors in one pool's embedding space.

public      the M subsets of the LoRA bank (the hypernetwork's training sets; may overlap)
validation  the public proxy sets (held out: hyperparameter choice at no privacy cost),
            built exactly like the private sets
private     the P private sets of the evaluation: disjoint (subsets.disjoint), so they are
            independent units and a person is in at most one of them
"""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

SECTIONS = ["subsets"]
COUNT_KEY = {"public": "num_public", "validation": "num_validation", "private": "num_private"}


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="embeddings .npy of the pool")
    p.add_argument("--pool", required=True, choices=sorted(COUNT_KEY))
    p.add_argument("--out", required=True, help="subsets .npz (anchors, members)")
    args = p.parse_args()
    s = cli.read_settings(args, SECTIONS)["subsets"]
    log = setup_logging("build_subsets")
    import numpy as np

    from dpdeepsets.data import atomic_savez, load_embeddings
    from dpdeepsets.seeds import derive_seed
    from dpdeepsets.subsets import disjoint_knn_subsets, knn_subsets

    z = load_embeddings(args.embeddings)  # refuses NaN/Inf, names the file
    num = s[COUNT_KEY[args.pool]]
    disjoint = args.pool != "public" and s["disjoint"]
    build = disjoint_knn_subsets if disjoint else knn_subsets
    anchors, members = build(z, num_sets=num, k=s["set_size"],
                             seed=derive_seed(s["seed"], "anchors", args.pool),
                             what=f"{args.pool} pool")
    atomic_savez(args.out, {"anchors": anchors, "members": members,
                            "disjoint": np.asarray(disjoint)})
    log.info("wrote %d %s sets of %d (%s) -> %s", num, args.pool, s["set_size"],
             "disjoint" if disjoint else "may overlap", args.out)


if __name__ == "__main__":
    cli.run(main)
