rule report:
    """EVALUATION OUTPUT: metrics.csv, privacy_ledger.csv and the FID/KID-vs-epsilon plots."""
    input:
        metrics=METRIC_FILES,
        releases=RELEASE_FILES,
        ledgers=BASELINE_LEDGER_FILES,
    output:
        metrics=report(f"{R}/metrics.csv", category="Results"),
        summary=report(f"{R}/summary.csv", category="Results"),
        ledger=report(f"{R}/privacy_ledger.csv", category="Privacy"),
        fid=report(f"{R}/fid_vs_epsilon.png", category="Results"),
        kid=report(f"{R}/kid_vs_epsilon.png", category="Results"),
    params:
        settings=settings("privacy"),
    resources:
        **stage_resources("light"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    shell:
        "python workflow/scripts/report.py --settings {params.settings}"
        " --metrics {input.metrics} --releases {input.releases} {input.ledgers}"
        " --out-metrics {output.metrics} --out-summary {output.summary} --out-ledger {output.ledger}"
        " --out-fid-plot {output.fid} --out-kid-plot {output.kid} > {log} 2>&1"


rule sample_figure:
    """Released artifacts: one column per DP method at evaluation.figure_epsilon (paper Fig. 1), and DP-DeepSets across epsilon."""
    input:
        FIGURE_SAMPLE_FILES,
    output:
        methods=report(f"{R}/samples.png", category="Results"),
        sweep=report(f"{R}/samples_vs_epsilon.png", category="Results"),
    params:
        eps=FIGURE_EPSILON,
    resources:
        **stage_resources("light"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/sample_figure.log",
    benchmark:
        f"{R}/benchmarks/sample_figure.tsv"
    shell:
        "python workflow/scripts/sample_figure.py --samples {input} --epsilon {params.eps}"
        " --out {output.methods} --out-sweep {output.sweep} > {log} 2>&1"
