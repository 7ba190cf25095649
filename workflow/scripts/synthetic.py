#!/usr/bin/env python
"""synthetic: DP-DeepSets vs opacus DP-SGD on synthetic linear regression (docs/synthetic.md).

Task vectors share a k-dim subspace of R^D that only public tasks reveal. Writes the
excess risk of every (D, epsilon, repetition, method: dpdeepsets, dpsgd, dpsgd_subspace and
the non-private references), the shift experiment (private task rotated out of the public
subspace), the DP-SGD tuning grids (public tasks only), figures, and a text summary with the
ratio tables DP-DeepSets / DP-SGD and DP-DeepSets / subspace DP-SGD, which it also prints.
Privacy noise: keyed by the secret --key file (synthetic.noise=keyed) or fresh OS entropy.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, atomic_path, set_threads, setup_logging

SECTIONS = ["synthetic"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--key", help="the secret noise key file (needed for synthetic.noise=keyed)")
    p.add_argument("--out-csv", required=True, help="excess risk per D/epsilon/rep/method .csv")
    p.add_argument("--out-shift-csv", required=True, help="shift experiment .csv")
    p.add_argument("--out-tuning-csv", required=True, help="DP-SGD tuning grids on public tasks .csv")
    p.add_argument("--out-plot", required=True, help="excess risk vs epsilon .png")
    p.add_argument("--out-shift-plot", required=True, help="excess risk vs shift angle .png")
    p.add_argument("--out-summary", required=True, help="tables (mean ± CI, ratios, shift) .txt")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)["synthetic"]
    log = setup_logging("synthetic")
    set_threads(args.threads)
    # Thousands of tiny torch/BLAS operations: numpy's BLAS gets the same thread count (more
    # threads only add synchronisation; on a busy 2-core machine 2 threads ran 15x slower).
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, args.threads))
    from dpdeepsets import synthetic
    from dpdeepsets.tables import write_csv

    with Stopwatch(log, "synthetic experiment"):
        res = synthetic.run_experiment(cfg, key_file=args.key)
    write_csv(args.out_csv, res.excess)
    write_csv(args.out_shift_csv, res.shift)
    write_csv(args.out_tuning_csv, res.tuning)
    synthetic.plot_excess_risk(args.out_plot, res.excess)
    synthetic.plot_shift(args.out_shift_plot, res.shift)
    text = synthetic.format_tables(res.excess, res.shift, res.public, res.noise)
    with atomic_path(args.out_summary) as tmp:
        tmp.write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    cli.run(main)
