# The synthetic linear-regression comparison (docs/synthetic.md): DP-DeepSets vs opacus
# DP-SGD (in all D coordinates, and in the public subspace) when task vectors share a k-dim
# subspace. A separate target, not part of `all`:
#
#   snakemake --cores 2 synthetic

SYNTHETIC = {
    "csv": f"{R}/synthetic/excess_risk.csv",
    "shift_csv": f"{R}/synthetic/shift.csv",
    "tuning_csv": f"{R}/synthetic/dpsgd_tuning.csv",
    "plot": f"{R}/synthetic/excess_risk.png",
    "shift_plot": f"{R}/synthetic/shift.png",
    "summary": f"{R}/synthetic/summary.txt",
}


rule synthetic_experiment:
    """Public tasks -> projection, clip norm, hypernetwork, DP-SGD tuning; private tasks ->
    one DP-DeepSets release, one DP-SGD and one subspace DP-SGD run per (D, epsilon,
    repetition), each with noise of its own from the secret key; references."""
    input:
        key=NOISE_KEY,
    output:
        csv=report(SYNTHETIC["csv"], caption="../report/synthetic_excess_risk.rst", category="Synthetic"),
        shift_csv=report(SYNTHETIC["shift_csv"], caption="../report/synthetic_shift.rst", category="Synthetic"),
        tuning_csv=SYNTHETIC["tuning_csv"],
        plot=report(SYNTHETIC["plot"], caption="../report/synthetic_excess_risk_plot.rst", category="Synthetic"),
        shift_plot=report(SYNTHETIC["shift_plot"], caption="../report/synthetic_shift_plot.rst", category="Synthetic"),
        summary=SYNTHETIC["summary"],
    params:
        settings=settings("synthetic"),
    # Single-threaded on purpose: the work is thousands of tiny torch/BLAS calls, and extra
    # threads only add synchronisation (2 threads ran ~15x slower on a busy 2-core machine).
    threads: 1
    resources:
        **stage_resources("cpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/synthetic.log",
    benchmark:
        f"{R}/benchmarks/synthetic.tsv"
    shell:
        f"python {SCRIPTS}/synthetic.py --settings {{params.settings}} --threads {{threads}}"
        " --key {input.key}"
        " --out-csv {output.csv} --out-shift-csv {output.shift_csv}"
        " --out-tuning-csv {output.tuning_csv} --out-plot {output.plot}"
        " --out-shift-plot {output.shift_plot} --out-summary {output.summary} > {log} 2>&1"
        " && cat {output.summary}"


rule synthetic:
    """Named target: `snakemake --cores 2 synthetic`."""
    input:
        list(SYNTHETIC.values()),
