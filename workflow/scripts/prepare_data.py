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
            priv, priv_labels = images, labels
        else:
            pub_idx, priv_idx = data.split_public_private(len(images), cfg["public_fraction"],
                                                          cfg["split_seed"])
            pub, priv = images[pub_idx], images[priv_idx]
            pub_labels = None if labels is None else labels[pub_idx]
            priv_labels = None if labels is None else labels[priv_idx]
        data.save_split(args.out_public, pub, pub_labels)
        data.save_split(args.out_private, priv, priv_labels)
        write_json(args.out_summary, {"public": len(pub), "private": len(priv),
                                      "shape": list(pub.shape[1:]), "source": cfg["source"]})
        log.info("wrote %d public -> %s, %d private -> %s", len(pub), args.out_public,
                 len(priv), args.out_private)


if __name__ == "__main__":
    cli.run(main)
