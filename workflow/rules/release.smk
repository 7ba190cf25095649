# THE DP STEP of DP-DeepSets: the only stage whose released output depends on private data.

if not config["privacy"]["key_file"]:

    rule noise_key:
        """SECRET: the key every DP release and DP-SGD fit derives its noise from (never publish it)."""
        output:
            NOISE_KEY,
        resources:
            **stage_resources("light"),
        conda:
            ENV
        log:
            f"{R}/logs/noise_key.log",
        shell:
            "python -m dpdeepsets.noise new-key {output} > {log} 2>&1"


rule release_embedding:
    """DP: one private set's clipped mean embedding + analytic Gaussian noise, at every finite epsilon."""
    input:
        unpack(key_input),
        embeddings=f"{R}/embeddings/private.npy",
        sets=f"{R}/subsets/private.npz",
    output:
        per_epsilon(f"{R}/release/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    params:
        n=SET_SIZE,
        settings=settings("privacy"),
        key=key_flag,
        eps=" ".join(FINITE_EPSILONS),
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/release_embedding/{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/release_embedding/{{pset}}_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/release_embedding.py --settings {{params.settings}}"
        " --embeddings {input.embeddings} --sets {input.sets} {params.key} --n {params.n}"
        " --pset {wildcards.pset} --epsilon {params.eps} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule release_reference:
    """NOT private: the exact clipped mean (epsilon = inf, no noise), a non-private reference cell."""
    input:
        unpack(key_input),
        embeddings=f"{R}/embeddings/private.npy",
        sets=f"{R}/subsets/private.npz",
    output:
        f"{R}/release/{{pset}}/epsinf_seed{{seed}}.json",
    params:
        n=SET_SIZE,
        settings=settings("privacy"),
        key=key_flag,
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/release_embedding/{{pset}}_epsinf_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/release_embedding/{{pset}}_epsinf_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/release_embedding.py --settings {{params.settings}}"
        " --embeddings {input.embeddings} --sets {input.sets} {params.key} --n {params.n}"
        " --pset {wildcards.pset} --epsilon inf --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"
