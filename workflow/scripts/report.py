#!/usr/bin/env python
"""report: metrics, summary (paired t-intervals over private sets), specificity, privacy ledger and budget, plots.

EVALUATION OUTPUT: the metrics are scores against the private sets (not a DP release). The
ledger and the budget are computed from the releases' and fits' ledger entries only.
"""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

SECTIONS = ["privacy", "evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--scores", nargs="+", required=True, help="per-method scores .csv files")
    p.add_argument("--releases", nargs="+", required=True,
                   help="release .json files and fit ledger .json files")
    p.add_argument("--figure-epsilon", required=True, help="epsilon of the sample figure")
    p.add_argument("--sets", help="private sets .npz: the budget per person (who is in which set)")
    for name in ("metrics", "summary", "specificity", "ledger", "budget", "fid-plot",
                 "kid-plot", "specificity-plot"):
        p.add_argument(f"--out-{name}", required=True)
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)
    priv = cfg["privacy"]
    log = setup_logging("report")
    from dpdeepsets import figures, tables
    from dpdeepsets.io import parse_epsilon

    scores = tables.read_scores(args.scores)
    metrics = tables.metrics_table(scores)
    tables.write_csv(args.out_metrics, metrics)
    spec, spec_summary = tables.specificity_table(scores)
    tables.write_csv(args.out_specificity, spec)
    summary = tables.summary_table(metrics).merge(
        spec_summary, on=["method", "epsilon"], how="left")
    tables.write_csv(args.out_summary, summary)
    ledger = tables.ledger_table(args.releases)
    tables.write_csv(args.out_ledger, ledger)
    fig_eps = parse_epsilon(args.figure_epsilon)
    membership = None
    if args.sets:
        import numpy as np

        with np.load(args.sets) as z:
            membership = {f"p{i}": m for i, m in enumerate(z["members"])}
    tables.write_csv(args.out_budget, tables.budget_table(ledger, fig_eps, priv["delta"], membership))
    figures.plot_vs_epsilon(args.out_fid_plot, metrics, "fid", priv["adjacency"])
    figures.plot_vs_epsilon(args.out_kid_plot, metrics, "kid", priv["adjacency"])
    figures.plot_specificity(args.out_specificity_plot, scores, fig_eps)
    with_margin = summary.dropna(subset=["fid_margin"]) if "fid_margin" in summary else summary
    log.info("summary (margin = method FID - DP-DeepSets FID, paired, 95%% t-interval over sets):\n%s",
             with_margin.to_string())
    log.info("specificity (cells whose own private set is the closest, by FID / by class "
             "histogram):\n%s", spec_summary.to_string())
    log.info("wrote %s, %s, %s, %s and the plots", args.out_metrics, args.out_summary,
             args.out_specificity, args.out_ledger)


if __name__ == "__main__":
    cli.run(main)
