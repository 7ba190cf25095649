#!/usr/bin/env python
"""fit_embedder: fit the embedding projection on PUBLIC images only.

A seeded subsample of at most embedder.fit_max_images public images (all of a smaller pool)
is read from the memory-mapped pool chunk by chunk (dpdeepsets.data.store.take_rows), so
memory depends on fit_max_images, not on the pool: that many uint8 images, their float32
encoder features, and the projection's F x F scatter matrix (dpdeepsets.embedder.Projection.fit).
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, set_threads, setup_logging

SECTIONS = ["embedder"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--public", required=True, help="public pool .npz")
    p.add_argument("--out", required=True, help="projection .npz")
    args = p.parse_args()
    e = cli.read_settings(args, SECTIONS)["embedder"]
    log = setup_logging("fit_embedder")
    if e["backend"] != "pixels":  # the pixel backend never imports torch (0.5 GB resident)
        set_threads(args.threads)
    import numpy as np

    from dpdeepsets import data, embedder
    from dpdeepsets.data.store import take_rows

    pool, _ = data.load_split(args.public, mmap=True)  # only the sampled rows are read
    rng = np.random.default_rng(e["seed"])
    if len(pool) > e["fit_max_images"]:
        rows = np.sort(rng.choice(len(pool), e["fit_max_images"], replace=False))
    else:
        rows = np.arange(len(pool))
    images = take_rows(pool, rows)
    with Stopwatch(log, f"features + projection of {len(images)} of {len(pool)} public images"):
        feats = embedder.features_from_config(images, e)
        proj = embedder.Projection.fit(feats, e["dim"], seed=e["seed"],
                                         metadata={"backend": e["backend"]})
        proj.save(args.out)
    log.info("wrote %s (%d -> %d dims)", args.out, feats.shape[1], e["dim"])


if __name__ == "__main__":
    cli.run(main)
