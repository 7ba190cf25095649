# DDIM samples of every cell, their Inception pool3 features and (with
# evaluation.class_histogram) the public digit classifier's labels. Samples and features are
# post-processing of the adapters: released artifacts, computed without private data.


rule sample:
    """Released: samples of one grid method / private set / seed at every finite epsilon, sampled in one batched pass."""
    input:
        unpack(_sample_inputs(FINITE_EPSILONS)),
    output:
        samples=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
        grids=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.png"),
        features=per_epsilon(f"{R}/features/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
    wildcard_constraints:
        method=alternatives(SAMPLED_GRID),
        pset=r"p\d+",
    params:
        settings=settings("sampling", "evaluation"),
        adapter=adapter_flag,
        classifier=classifier_flag,
        inception=inception_flag,
    threads: THREADS
    resources:
        **stage_resources("sampling"),
    conda:
        ENV
    log:
        f"{R}/logs/sample/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        SAMPLE_SHELL


rule sample_reference:
    """NOT private: samples of one epsilon = inf cell (nonprivate, DP-DeepSets without noise): reference artifacts."""
    input:
        unpack(_sample_inputs(["inf"])),
    output:
        samples=f"{R}/samples/{{method}}/{{pset}}/epsinf_seed{{seed}}.npz",
        grids=f"{R}/samples/{{method}}/{{pset}}/epsinf_seed{{seed}}.png",
        features=f"{R}/features/{{method}}/{{pset}}/epsinf_seed{{seed}}.npz",
    wildcard_constraints:
        pset=r"p\d+",
    params:
        settings=settings("sampling", "evaluation"),
        adapter=adapter_flag,
        classifier=classifier_flag,
        inception=inception_flag,
    threads: THREADS
    resources:
        **stage_resources("sampling"),
    conda:
        ENV
    log:
        f"{R}/logs/sample/{{method}}_{{pset}}_epsinf_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{method}}_{{pset}}_epsinf_seed{{seed}}.tsv"
    shell:
        SAMPLE_SHELL


rule sample_public:
    """Released: samples of one public-only cell (epsilon = 0: no private data), e.g. the base model."""
    input:
        unpack(_sample_inputs(["0"])),
    output:
        samples=f"{R}/samples/{{method}}/all/eps0_seed{{seed}}.npz",
        grids=f"{R}/samples/{{method}}/all/eps0_seed{{seed}}.png",
        features=f"{R}/features/{{method}}/all/eps0_seed{{seed}}.npz",
    wildcard_constraints:
        method=alternatives(PUBLIC_ONLY),
    params:
        settings=settings("sampling", "evaluation"),
        adapter=adapter_flag,
        classifier=classifier_flag,
        inception=inception_flag,
    threads: THREADS
    resources:
        **stage_resources("sampling"),
    conda:
        ENV
    log:
        f"{R}/logs/sample/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{method}}_seed{{seed}}.tsv"
    shell:
        SAMPLE_SHELL
