#!/usr/bin/env python
"""fit_digit_classifier: a classifier of the labelled PUBLIC pool (it labels samples for the
class histograms of the specificity table); accuracy checked on the public validation pool.

Both pools are memory-mapped: the fit reads a seeded subsample of at most --max-images
public images (all of a smaller pool), the validation pool is labelled in chunks, so memory
does not grow with the pool (dpdeepsets.classifier)."""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, setup_logging


def main():
    from dpdeepsets import classifier

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--public", required=True, help="public pool .npz (labelled)")
    p.add_argument("--validation", required=True, help="public validation pool .npz (labelled)")
    p.add_argument("--out", required=True, help="classifier .npz")
    p.add_argument("--max-images", type=int, default=classifier.DEFAULT_MAX_IMAGES,
                   help="public images the fit uses at most (a seeded subsample of a larger pool; "
                        "default: %(default)s)")
    args = p.parse_args()
    log = setup_logging("fit_digit_classifier")
    from dpdeepsets.data import load_split

    x, y = load_split(args.public, mmap=True)
    xv, yv = load_split(args.validation, mmap=True)
    for path, labels in ((args.public, y), (args.validation, yv)):
        if labels is None:
            raise ValueError(f"{path}: the pool has no labels; set evaluation.class_histogram: false")
    n_fit = len(classifier.fit_rows(len(x), args.max_images, seed=0))
    with Stopwatch(log, f"logistic regression on {n_fit} of {len(x)} public images"):
        clf = classifier.fit(x, y, xv, yv, max_images=args.max_images)
    clf.save(args.out)
    log.info("wrote %s: %d classes, public validation accuracy %.3f (%d images)", args.out,
             len(clf.classes), clf.validation_accuracy, len(xv))


if __name__ == "__main__":
    cli.run(main)
