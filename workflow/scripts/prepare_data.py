#!/usr/bin/env python
"""prepare_data: load the image source, resize, and split into disjoint public/private pools."""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, setup_logging, write_json

SECTIONS = ["data"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--out-public", required=True, help="public pool .npz")
    p.add_argument("--out-private", required=True, help="private pool .npz")
    p.add_argument("--out-summary", required=True, help="summary .json")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)["data"]
    log = setup_logging("prepare_data")
    from dpdeepsets import data

    with Stopwatch(log, "prepare_data"):
        images, labels = data.load_source(cfg["source"])
        images = data.resize_images(images, cfg["image_size"])
        log.info("read %d images %s from %s", len(images), images.shape[1:], cfg["source"])
        if cfg["public_source"]:
            pub, pub_labels = data.load_source(cfg["public_source"])
            pub = data.resize_images(pub, cfg["image_size"])
            if pub.shape[-1] != images.shape[-1]:
                raise data.DataError(f"data.public_source has {pub.shape[-1]} channels but "
                                     f"data.source has {images.shape[-1]}")
            pub_idx = priv_idx = None
            priv, priv_labels = images, labels
        else:
            pub_idx, priv_idx = data.split_public_private(len(images), cfg["public_fraction"],
                                                          cfg["split_seed"])
            pub, priv, pub_labels, priv_labels = images, images, labels, labels
        # Rows are streamed from the (possibly memory-mapped) source: the pools are never
        # materialised, so a pool larger than RAM can be split.
        data.save_split(args.out_public, pub, pub_labels, index=pub_idx)
        data.save_split(args.out_private, priv, priv_labels, index=priv_idx)
        n_pub = len(pub) if pub_idx is None else len(pub_idx)
        n_priv = len(priv) if priv_idx is None else len(priv_idx)
        write_json(args.out_summary, {"public": n_pub, "private": n_priv,
                                      "shape": list(pub.shape[1:]), "source": cfg["source"]})
        log.info("wrote %d public -> %s, %d private -> %s", n_pub, args.out_public,
                 n_priv, args.out_private)


if __name__ == "__main__":
    cli.run(main)
