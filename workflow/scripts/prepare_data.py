#!/usr/bin/env python
"""prepare_data: load the image source, resize, and split it into disjoint pools.

public      trains the base model, the embedder, the LoRA bank and the hypernetwork;
validation  public too, held out from all of them: it plays the part of private data when
            hyperparameters are chosen (proxy sets), at no privacy cost;
private     the private sets come from here.
Every split is a seeded permutation that does not depend on the images (label filters
for a shift experiment, data.public_classes / data.private_classes, are applied after it).
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, setup_logging, write_json

SECTIONS = ["data"]


def _keep_classes(index, labels, classes, key):
    import numpy as np

    from dpdeepsets.data import DataError

    if classes is None:
        return index
    if labels is None:
        raise DataError(f"data.{key} needs a labelled source (its images have no labels)")
    kept = index[np.isin(labels[index], np.asarray(classes))]
    if kept.size == 0:
        raise DataError(f"data.{key} {classes} keeps no image (labels present: "
                        f"{sorted(set(labels[index].tolist()))})")
    return kept


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--out-public", required=True, help="public pool .npz")
    p.add_argument("--out-validation", required=True, help="public validation pool .npz")
    p.add_argument("--out-private", required=True, help="private pool .npz")
    p.add_argument("--out-summary", required=True, help="summary .json")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)["data"]
    log = setup_logging("prepare_data")
    import numpy as np

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
            pub_idx, priv_idx = np.arange(len(pub)), np.arange(len(images))
        else:
            pub, pub_labels = images, labels
            pub_idx, priv_idx = data.split_public_private(len(images), cfg["public_fraction"],
                                                          cfg["split_seed"])
        # The validation pool: a seeded part of the public pool (data-independent), by default
        # as large as the private pool, so the proxy sets are built like the private sets.
        n_val = data.validation_pool_size(len(pub_idx), len(priv_idx), cfg)
        train_pos, val_pos = data.split_public_private(len(pub_idx), 1 - n_val / len(pub_idx),
                                                       cfg["split_seed"] + 1)
        pools = {"public": (pub, pub_labels, pub_idx[train_pos], "public_classes"),
                 "validation": (pub, pub_labels, pub_idx[val_pos], "public_classes"),
                 "private": (images, labels, priv_idx, "private_classes")}
        summary = {"source": cfg["source"], "shape": list(images.shape[1:])}
        outs = {"public": args.out_public, "validation": args.out_validation,
                "private": args.out_private}
        for name, (imgs, labs, index, key) in pools.items():
            index = _keep_classes(index, labs, cfg[key], key)
            # Rows are streamed from the (possibly memory-mapped) source: the pools are never
            # materialised, so a pool larger than RAM can be split.
            data.save_split(outs[name], imgs, labs, index=index)
            summary[name] = int(len(index))
            log.info("wrote %d %s images -> %s", len(index), name, outs[name])
        write_json(args.out_summary, summary)


if __name__ == "__main__":
    cli.run(main)
