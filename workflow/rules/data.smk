rule prepare_data:
    """Load the image source and split it into disjoint public, public-validation and private pools."""
    output:
        public=f"{R}/data/public.npz",
        validation=f"{R}/data/validation.npz",
        private=f"{R}/data/private.npz",
        summary=f"{R}/data/summary.json",
    params:
        settings=settings("data"),
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    shell:
        f"python {SCRIPTS}/prepare_data.py --settings {{params.settings}}"
        " --out-public {output.public} --out-validation {output.validation}"
        " --out-private {output.private} --out-summary {output.summary} > {log} 2>&1"
