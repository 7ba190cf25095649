rule build_subsets:
    """k-NN sets: public subsets (the LoRA bank), public proxy sets (validation) or private sets (evaluation)."""
    input:
        f"{R}/embeddings/{{pool}}.npy",
    output:
        f"{R}/subsets/{{pool}}.npz",
    params:
        settings=settings("subsets"),
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/build_subsets_{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/build_subsets_{{pool}}.tsv"
    shell:
        f"python {SCRIPTS}/build_subsets.py --settings {{params.settings}}"
        " --embeddings {input} --pool {wildcards.pool} --out {output} > {log} 2>&1"
