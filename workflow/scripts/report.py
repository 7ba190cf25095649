#!/usr/bin/env python
"""report: results/metrics.csv, the per-method summary, the privacy ledger and the FID/KID-vs-epsilon plots.

EVALUATION OUTPUT: the metrics are scores against the private sets (not a DP release).
"""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging

SECTIONS = ["privacy"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--metrics", nargs="+", required=True, help="per-cell metrics .json files")
    p.add_argument("--releases", nargs="+", required=True, help="release .json files (and baseline ledger .json files)")
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-summary", required=True, help="per (method, epsilon) mean/std .csv")
    p.add_argument("--out-ledger", required=True)
    p.add_argument("--out-fid-plot", required=True)
    p.add_argument("--out-kid-plot", required=True)
    args = p.parse_args()
    priv = cli.read_settings(args, SECTIONS)["privacy"]
    log = setup_logging("report")
    from dpdeepsets import report

    df = report.metrics_table(args.metrics)
    report.write_csv(args.out_metrics, df)
    ledger = report.ledger_table(args.releases, priv["delta"])
    report.write_csv(args.out_ledger, ledger)
    report.plot_fid_vs_epsilon(args.out_fid_plot, df, "fid")
    report.plot_fid_vs_epsilon(args.out_kid_plot, df, "kid")

    summary = report.summary_table(df)
    report.write_csv(args.out_summary, summary)
    log.info("mean over sets and seeds:\n%s", summary.to_string())
    log.info("wrote %s, %s and figures", args.out_metrics, args.out_ledger)


if __name__ == "__main__":
    cli.run(main)
