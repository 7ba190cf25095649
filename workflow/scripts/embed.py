#!/usr/bin/env python
"""embed: embed every image of one pool with the fixed public-fitted encoder (unit-norm rows).

The pool is memory-mapped and embedded chunk by chunk straight into the output file
(dpdeepsets.embedder.write_embeddings), so memory does not grow with the pool.

Embeddings of the private pool are private data: only release_embedding (the DP release)
and build_subsets (the choice of evaluation sets) read them.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, set_threads, setup_logging

SECTIONS = ["embedder"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--images", required=True, help="pool .npz")
    p.add_argument("--projection", required=True, help="projection .npz from fit_embedder")
    p.add_argument("--out", required=True, help="embeddings .npy, float32 [N, d]")
    args = p.parse_args()
    e = cli.read_settings(args, SECTIONS)["embedder"]
    log = setup_logging("embed")
    if e["backend"] != "pixels":  # the pixel backend never imports torch (0.5 GB resident)
        set_threads(args.threads)
    from dpdeepsets import data, embedder

    images, _ = data.load_split(args.images, mmap=True)
    proj = embedder.Projection.load(args.projection)
    with Stopwatch(log, f"embedding {len(images)} images of {args.images}"):
        shape = embedder.write_embeddings(args.out, images, proj, e)
    log.info("wrote %s %s", args.out, shape)


if __name__ == "__main__":
    cli.run(main)
