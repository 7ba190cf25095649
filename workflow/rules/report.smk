rule report:
    """EVALUATION OUTPUT: metrics, summary with intervals, specificity, the privacy ledger and budget, the plots."""
    input:
        scores=SCORE_FILES,
        releases=RELEASE_FILES,
        ledgers=FIT_LEDGER_FILES,
        sets=f"{R}/subsets/private.npz",
    output:
        metrics=report(f"{R}/metrics.csv", caption="../report/metrics.rst", category="Results"),
        summary=report(f"{R}/summary.csv", caption="../report/summary.rst", category="Results"),
        specificity=report(f"{R}/specificity.csv", caption="../report/specificity.rst", category="Results"),
        ledger=report(f"{R}/privacy_ledger.csv", caption="../report/privacy_ledger.rst", category="Privacy"),
        budget=report(f"{R}/privacy_budget.csv", caption="../report/privacy_budget.rst", category="Privacy"),
        fid=report(f"{R}/fid_vs_epsilon.png", caption="../report/fid_vs_epsilon.rst", category="Results"),
        kid=report(f"{R}/kid_vs_epsilon.png", caption="../report/kid_vs_epsilon.rst", category="Results"),
        specificity_plot=report(f"{R}/specificity.png", caption="../report/specificity_plot.rst", category="Results"),
    params:
        settings=settings("privacy", "evaluation"),
        figure_eps=FIGURE_EPSILON,
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    shell:
        f"python {SCRIPTS}/report.py --settings {{params.settings}} --scores {{input.scores}}"
        " --releases {input.releases} {input.ledgers} --figure-epsilon {params.figure_eps}"
        " --sets {input.sets}"
        " --out-metrics {output.metrics} --out-summary {output.summary}"
        " --out-specificity {output.specificity} --out-ledger {output.ledger}"
        " --out-budget {output.budget} --out-fid-plot {output.fid} --out-kid-plot {output.kid}"
        " --out-specificity-plot {output.specificity_plot} > {log} 2>&1"


rule sample_figure:
    """Released: one column per DP or public method at evaluation.figure_epsilon (paper Fig. 1), and DP-DeepSets across epsilon."""
    input:
        FIGURE_SAMPLE_FILES,
    output:
        methods=report(f"{R}/samples.png", caption="../report/samples.rst", category="Samples"),
        sweep=report(f"{R}/samples_vs_epsilon.png", caption="../report/samples_vs_epsilon.rst", category="Samples"),
    params:
        eps=FIGURE_EPSILON,
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/sample_figure.log",
    benchmark:
        f"{R}/benchmarks/sample_figure.tsv"
    shell:
        f"python {SCRIPTS}/sample_figure.py --samples {{input}} --epsilon {{params.eps}}"
        " --out {output.methods} --out-sweep {output.sweep} > {log} 2>&1"
