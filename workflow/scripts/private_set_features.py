#!/usr/bin/env python
"""private_set_features: Inception pool3 features and label histograms of every private set.

EVALUATION ONLY: reads private images (and labels) to score the methods against them; the
output is read by score alone and is never released as a model, sample or embedding.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--private", required=True, help="private pool .npz")
    p.add_argument("--sets", required=True, help="private sets .npz")
    p.add_argument("--inception-runtime", default="torch", help="torch, onnxruntime or auto")
    p.add_argument("--inception-cache", help="the Inception ONNX export's directory (rule inception_onnx)")
    p.add_argument("--out", required=True, help="features .npz (features_pI, labels_pI per set)")
    args = p.parse_args()
    ev = cli.read_settings(args, SECTIONS)["evaluation"]
    log = setup_logging("private_set_features")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets.data import atomic_savez, load_split
    from dpdeepsets.metrics import InceptionFeatures

    images, labels = load_split(args.private, mmap=True)
    members = np.load(args.sets)["members"]
    extractor = InceptionFeatures(device=pick_device(), batch_size=ev["batch_size"],
                                  runtime=args.inception_runtime, cache_dir=args.inception_cache,
                                  threads=args.threads)
    arrays = {"psets": np.array([f"p{i}" for i in range(len(members))])}
    for i, rows in enumerate(members):
        with Stopwatch(log, f"Inception features of private set p{i} ({len(rows)} images)"):
            arrays[f"features_p{i}"] = extractor(np.asarray(images[rows]))
        if labels is not None:
            arrays[f"labels_p{i}"] = labels[rows]
    atomic_savez(args.out, arrays)
    log.info("wrote %s (%d sets)", args.out, len(members))


if __name__ == "__main__":
    cli.run(main)
