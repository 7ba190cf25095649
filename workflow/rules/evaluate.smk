rule reference_features:
    """EVALUATION ONLY: Inception features of a private set (never released)."""
    input:
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        f"{R}/eval/reference/{{pset}}.npz",
    params:
        settings=settings("evaluation"),
    threads: THREADS
    resources:
        **stage_resources("encoder"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/reference_features_{{pset}}.log",
    benchmark:
        f"{R}/benchmarks/reference_features_{{pset}}.tsv"
    shell:
        "python workflow/scripts/reference_features.py --settings {params.settings}"
        " --threads {threads} --private {input.private} --sets {input.sets}"
        " --pset {wildcards.pset} --out {output} > {log} 2>&1"


rule evaluate:
    """EVALUATION ONLY: FID and KID of one DP method / private set / seed at every finite epsilon, one process."""
    input:
        samples=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
        reference=f"{R}/eval/reference/{{pset}}.npz",
    output:
        per_epsilon(f"{R}/eval/metrics/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    wildcard_constraints:
        method="|".join(DP_GRID_METHODS),
    params:
        settings=settings("evaluation"),
        eps=" ".join(FINITE_EPSILONS),
    threads: THREADS
    resources:
        **stage_resources("encoder"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/evaluate/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/evaluate.py --settings {params.settings} --threads {threads}"
        " --samples {input.samples} --reference {input.reference} --method {wildcards.method}"
        " --pset {wildcards.pset} --epsilon {params.eps} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule evaluate_reference:
    """EVALUATION ONLY: FID and KID of one epsilon = inf cell (base, nonprivate, DP-DeepSets without noise)."""
    input:
        samples=lambda wc: sample_path(wc.method, wc.pset, wc.eps, wc.seed),
        reference=f"{R}/eval/reference/{{pset}}.npz",
    output:
        f"{R}/eval/metrics/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json",
    wildcard_constraints:
        eps="inf",
    params:
        settings=settings("evaluation"),
    threads: THREADS
    resources:
        **stage_resources("encoder"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/evaluate/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/evaluate.py --settings {params.settings} --threads {threads}"
        " --samples {input.samples} --reference {input.reference} --method {wildcards.method}"
        " --pset {wildcards.pset} --epsilon {wildcards.eps} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"
