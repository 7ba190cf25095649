#!/usr/bin/env python
"""fit_embedder: fit the embedding projection on PUBLIC images only."""

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
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets import data, embedder

    images, _ = data.load_split(args.public, mmap=True)  # only the sampled rows are read
    rng = np.random.default_rng(e["seed"])
    if len(images) > e["fit_max_images"]:
        images = images[np.sort(rng.choice(len(images), e["fit_max_images"], replace=False))]
    else:
        images = np.array(images)
    with Stopwatch(log, f"features + projection of {len(images)} public images"):
        feats = embedder.features_from_config(images, e)
        proj = embedder.Projection.fit(feats, e["dim"], seed=e["seed"],
                                         metadata={"backend": e["backend"]})
        proj.save(args.out)
    log.info("wrote %s (%d -> %d dims)", args.out, feats.shape[1], e["dim"])


if __name__ == "__main__":
    cli.run(main)
