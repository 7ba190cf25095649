#!/usr/bin/env python
"""score: every cell of one method scored against every private set (EVALUATION ONLY).

For each cell's features (from sample) and each private set j: FID and KID (clean-fid's
statistics, dpdeepsets.scores: numpy only), precision / recall / density / coverage (Naeem
et al. 2020; against the cell's own set), and, when the cells carry class labels, the total
variation between the samples' label histogram and set j's. One CSV row per (cell, j): the
own-set rows are the metrics, all rows together the specificity table.
"""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

SECTIONS = ["evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--features", nargs="+", required=True, help="features .npz of the cells")
    p.add_argument("--private", required=True, help="private sets' features .npz")
    p.add_argument("--out", required=True, help="scores .csv")
    args = p.parse_args()
    cli.read_settings(args, SECTIONS)
    log = setup_logging("score")
    import numpy as np

    import pandas as pd

    from dpdeepsets import scores, tables
    from dpdeepsets.classifier import histogram

    priv = np.load(args.private)
    psets = [str(s) for s in priv["psets"]]
    refs = {s: priv[f"features_{s}"] for s in psets}
    ref_labels = {s: priv[f"labels_{s}"] for s in psets if f"labels_{s}" in priv.files}
    classes = np.unique(np.concatenate(list(ref_labels.values()))) if ref_labels else None
    rows = []
    for path in args.features:
        cell = tables.parse_cell(path)
        z = np.load(path)
        feats, labels = z["features"], (z["labels"] if "labels" in z.files else None)
        for j in psets:
            own = cell["pset"] in (j, "all")
            row = {**{k: cell[k] for k in ("method", "pset", "epsilon", "seed")}, "scored_against": j,
                   "fid": scores.fid_from_features(feats, refs[j]),
                   "kid": scores.kid_from_features(feats, refs[j]),
                   "n_samples": len(feats), "n_reference": len(refs[j])}
            if own:
                row.update(scores.precision_recall(refs[j], feats))
            if labels is not None and j in ref_labels:
                row["class_tv"] = 0.5 * float(np.abs(histogram(labels, classes)
                                                     - histogram(ref_labels[j], classes)).sum())
            if not (np.isfinite(row["fid"]) and np.isfinite(row["kid"])):
                raise ValueError(f"non-finite metric for {path} against {j}: {row}")
            rows.append(row)
        log.info("%s: FID against its own set %s", path,
                 ", ".join(f"{r['scored_against']} {r['fid']:.2f}" for r in rows[-len(psets):]
                           if r["pset"] in (r["scored_against"], "all")))
    tables.write_csv(args.out, pd.DataFrame(rows))
    log.info("wrote %s (%d rows)", args.out, len(rows))


if __name__ == "__main__":
    cli.run(main)
