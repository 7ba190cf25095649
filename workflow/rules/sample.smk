rule sample:
    """DDIM samples of one DP method / private set / seed at every finite epsilon, one process (same seed for all methods)."""
    input:
        base=f"{R}/base",
        adapters=per_epsilon(f"{R}/adapters/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}"),
    output:
        samples=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
        grids=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.png"),
    wildcard_constraints:
        method="|".join(DP_GRID_METHODS),
    params:
        settings=settings("sampling"),
    threads: THREADS
    resources:
        **stage_resources("sampling"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/sample/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/sample.py --settings {params.settings} --threads {threads}"
        " --base {input.base} --adapter {input.adapters} --seed {wildcards.seed}"
        " --out {output.samples} --out-grid {output.grids} > {log} 2>&1"


rule sample_reference:
    """DDIM samples of one epsilon = inf cell: the base model, nonprivate, DP-DeepSets without noise (NON-private references)."""
    input:
        unpack(adapter_input),
        base=f"{R}/base",
    output:
        samples=f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz",
        grid=f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.png",
    wildcard_constraints:
        eps="inf",
    params:
        settings=settings("sampling"),
        adapter=lambda wc, input: f"--adapter {input.adapter}" if "adapter" in input.keys() else "",
    threads: THREADS
    resources:
        **stage_resources("sampling"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/sample/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/sample.py --settings {params.settings} --threads {threads}"
        " --base {input.base} {params.adapter} --seed {wildcards.seed}"
        " --out {output.samples} --out-grid {output.grid} > {log} 2>&1"
