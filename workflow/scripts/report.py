#!/usr/bin/env python
"""report: results/metrics.csv, the privacy ledger, FID/KID-vs-epsilon plots and a sample figure."""

from dpdeepsets import cli
from dpdeepsets.io import format_epsilon, setup_logging

SECTIONS = ["privacy"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--metrics", nargs="+", required=True, help="per-cell metrics .json files")
    p.add_argument("--releases", nargs="+", required=True, help="release .json files")
    p.add_argument("--samples", nargs="+", required=True, help="sample .npz files (for the figure)")
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-ledger", required=True)
    p.add_argument("--out-fid-plot", required=True)
    p.add_argument("--out-kid-plot", required=True)
    p.add_argument("--out-samples", required=True)
    args = p.parse_args()
    priv = cli.read_settings(args, SECTIONS)["privacy"]
    log = setup_logging("report")
    from pathlib import Path

    from dpdeepsets import report
    from dpdeepsets.data import load_split

    df = report.metrics_table(args.metrics)
    report.write_csv(args.out_metrics, df)
    ledger = report.ledger_table(args.releases, priv["delta"])
    report.write_csv(args.out_ledger, ledger)
    report.plot_fid_vs_epsilon(args.out_fid_plot, df, "fid")
    report.plot_fid_vs_epsilon(args.out_kid_plot, df, "kid")

    # Sample figure: one row per private set; base, then dpdeepsets by epsilon (first seed).
    seed0 = df["seed"].min()
    by_path = {Path(s).as_posix(): s for s in args.samples}
    rows = []
    for pset in sorted(df["pset"].unique()):
        cells = []
        for _, r in df[(df["pset"] == pset) & (df["seed"] == seed0)].sort_values(
                ["method", "epsilon"]).iterrows():
            eps = format_epsilon(r["epsilon"])
            key = next((k for k in by_path if f"/{r['method']}/" in k and
                        (f"/{pset}/" in k or r["method"] == "base") and
                        k.endswith(f"eps{eps}_seed{seed0}.npz")), None)
            if key:
                label = "base" if r["method"] == "base" else f"{r['method']} eps={eps}"
                cells.append((label, load_split(by_path[key])[0]))
        rows.append((pset, cells))
    report.sample_figure(args.out_samples, rows)
    summary = df.groupby(["method", "epsilon"])[["fid", "kid"]].mean()
    log.info("mean over sets and seeds:\n%s", summary.to_string())
    log.info("wrote %s, %s and figures", args.out_metrics, args.out_ledger)


if __name__ == "__main__":
    cli.run(main)
