rule report:
    """metrics.csv, privacy_ledger.csv, FID/KID-vs-epsilon plots and the sample figure."""
    input:
        metrics=METRIC_FILES,
        releases=RELEASE_FILES,
        samples=SAMPLE_FILES,
    output:
        metrics=report(f"{R}/metrics.csv", category="Results"),
        ledger=report(f"{R}/privacy_ledger.csv", category="Privacy"),
        fid=report(f"{R}/fid_vs_epsilon.png", category="Results"),
        kid=report(f"{R}/kid_vs_epsilon.png", category="Results"),
        samples=report(f"{R}/samples.png", category="Results"),
    params:
        settings=settings("privacy"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    shell:
        "python workflow/scripts/report.py --settings {params.settings}"
        " --metrics {input.metrics} --releases {input.releases} --samples {input.samples}"
        " --out-metrics {output.metrics} --out-ledger {output.ledger}"
        " --out-fid-plot {output.fid} --out-kid-plot {output.kid}"
        " --out-samples {output.samples} > {log} 2>&1"
