#!/usr/bin/env python
"""embed: embed every image of one pool with the fixed public-fitted encoder (unit-norm rows).

Embeddings of the private pool are private data: only release_embedding (the DP release)
and build_subsets (the choice of evaluation sets) read them.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, atomic_path, set_threads, setup_logging

SECTIONS = ["embedder"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--images", required=True, help="pool .npz")
    p.add_argument("--projection", required=True, help="projection .npz from fit_embedder")
    p.add_argument("--out", required=True, help="embeddings .npy, float32 [N, d]")
    args = p.parse_args()
    e = cli.read_settings(args, SECTIONS)["embedder"]
    log = setup_logging("embed")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets import data, embedder

    images, _ = data.load_split(args.images)
    proj = embedder.Projection.load(args.projection)
    with Stopwatch(log, f"embedding {len(images)} images"):
        feats = embedder.features_from_config(images, e)
        z = proj.transform(feats)
    if not np.isfinite(z).all():
        raise ValueError(f"embeddings of {args.images} contain NaN or Inf")
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, z)
    log.info("wrote %s %s", args.out, z.shape)


if __name__ == "__main__":
    cli.run(main)
