#!/usr/bin/env python
"""fit_digit_classifier: a classifier of the labelled PUBLIC pool (it labels samples for the
class histograms of the specificity table); accuracy checked on the public validation pool."""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, setup_logging


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--public", required=True, help="public pool .npz (labelled)")
    p.add_argument("--validation", required=True, help="public validation pool .npz (labelled)")
    p.add_argument("--out", required=True, help="classifier .npz")
    args = p.parse_args()
    log = setup_logging("fit_digit_classifier")
    from dpdeepsets import classifier
    from dpdeepsets.data import load_split

    x, y = load_split(args.public)
    xv, yv = load_split(args.validation)
    if y is None or yv is None:
        raise ValueError(f"{args.public}: the public pool has no labels; set "
                         f"evaluation.class_histogram: false")
    with Stopwatch(log, f"logistic regression on {len(x)} public images"):
        clf = classifier.fit(x, y, xv, yv)
    clf.save(args.out)
    log.info("wrote %s: %d classes, public validation accuracy %.3f", args.out,
             len(clf.classes), clf.validation_accuracy)


if __name__ == "__main__":
    cli.run(main)
