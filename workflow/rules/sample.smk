rule sample:
    """DDIM samples of one method / private set / epsilon / seed (same seed for all methods)."""
    input:
        unpack(adapter_input),
        base=f"{R}/base",
    output:
        samples=f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz",
        grid=f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.png",
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
