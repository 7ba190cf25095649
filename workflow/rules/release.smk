if not config["privacy"]["key_file"]:

    rule noise_key:
        """SECRET: the key every DP release and DP-SGD fit derives its noise from (never publish it)."""
        output:
            NOISE_KEY,
        resources:
            **stage_resources("light"),
        log:
            f"{R}/logs/noise_key.log",
        shell:
            "python -m dpdeepsets.noise new-key {output} > {log} 2>&1"


rule release_embedding:
    """THE DP STEP: clipped mean of one private set's embeddings + analytic Gaussian noise."""
    input:
        embeddings=f"{R}/embeddings/private.npy",
        sets=f"{R}/subsets/private.npz",
        key=NOISE_KEY,
    output:
        f"{R}/release/{{pset}}/eps{{eps}}_seed{{seed}}.json",
    params:
        settings=settings("privacy"),
        n=config["subsets"]["set_size"],
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/release_embedding/{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/release_embedding/{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/release_embedding.py --settings {params.settings}"
        " --embeddings {input.embeddings} --sets {input.sets} --key {input.key} --n {params.n}"
        " --pset {wildcards.pset} --epsilon {wildcards.eps} --seed {wildcards.seed}"
        " --out {output} > {log} 2>&1"


rule generate_lora:
    """Post-processing: the hypernetwork maps the released embedding to a PEFT adapter."""
    input:
        release=f"{R}/release/{{pset}}/eps{{eps}}_seed{{seed}}.json",
        hypernet=f"{R}/hypernet/hypernet.pt",
    output:
        directory(f"{R}/adapters/dpdeepsets/{{pset}}/eps{{eps}}_seed{{seed}}"),
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/generate_lora/{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate_lora/{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/generate_lora.py --release {input.release}"
        " --hypernet {input.hypernet} --out {output} > {log} 2>&1"
