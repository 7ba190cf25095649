#!/usr/bin/env python
"""reference_features: Inception pool3 features of one private set (EVALUATION ONLY).

Reads private images to score the methods against them; its output is used only by
evaluate and is never released as a model, sample or embedding.
"""

from dpdeepsets import cli
from dpdeepsets.io import pick_device, Stopwatch, set_threads, setup_logging

SECTIONS = ["evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--private", required=True, help="private pool .npz")
    p.add_argument("--sets", required=True, help="private sets .npz")
    p.add_argument("--pset", required=True, help="private set id, e.g. p0")
    p.add_argument("--out", required=True, help="features .npz")
    args = p.parse_args()
    ev = cli.read_settings(args, SECTIONS)["evaluation"]
    log = setup_logging("reference_features")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets.data import atomic_savez, load_split
    from dpdeepsets.metrics import InceptionFeatures

    images, _ = load_split(args.private)
    members = np.load(args.sets)["members"][int(args.pset.lstrip("p"))]
    with Stopwatch(log, f"Inception features of {len(members)} private images"):
        feats = InceptionFeatures(device=pick_device(), batch_size=ev["batch_size"])(images[members])
    atomic_savez(args.out, {"features": feats})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    cli.run(main)
