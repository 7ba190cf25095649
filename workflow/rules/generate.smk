# Adapters made without training on private data: post-processing of a release
# (dpdeepsets, nearest_public_lora) or public only (mean_public_lora). The registry's
# Method.producer == "generate" and its generator (dpdeepsets.generators) say which.


rule generate_lora:
    """Post-processing of the DP releases: one method's adapter at every finite epsilon of one private set and seed."""
    input:
        unpack(generator_inputs),
        releases=per_epsilon(f"{R}/release/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    output:
        [directory(p) for p in per_epsilon(f"{R}/adapters/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}")],
    wildcard_constraints:
        method=alternatives(RELEASE_METHODS),
        pset=r"p\d+",
    params:
        flags=generator_flags,
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/generate_lora/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate_lora/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/generate_lora.py --method {{wildcards.method}} {{params.flags}}"
        " --release {input.releases} --out {output} > {log} 2>&1"


rule generate_lora_reference:
    """NOT private: a release method's adapter from the noise-free release (epsilon = inf reference)."""
    input:
        unpack(generator_inputs),
        release=f"{R}/release/{{pset}}/epsinf_seed{{seed}}.json",
    output:
        directory(f"{R}/adapters/{{method}}/{{pset}}/epsinf_seed{{seed}}"),
    wildcard_constraints:
        method=alternatives(RELEASE_METHODS),
        pset=r"p\d+",
    params:
        flags=generator_flags,
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/generate_lora/{{method}}_{{pset}}_epsinf_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate_lora/{{method}}_{{pset}}_epsinf_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/generate_lora.py --method {{wildcards.method}} {{params.flags}}"
        " --release {input.release} --out {output} > {log} 2>&1"


rule generate_public:
    """Public only (epsilon = 0): an adapter from public artifacts alone, e.g. the mean public LoRA."""
    input:
        unpack(generator_inputs),
    output:
        directory(f"{R}/adapters/{{method}}/all/eps0_seed{{seed}}"),
    wildcard_constraints:
        method=alternatives(methods_where(lambda m: m.privacy == "public_only" and m.producer == "generate")),
    params:
        flags=generator_flags,
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/generate_lora/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate_lora/{{method}}_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/generate_lora.py --method {{wildcards.method}} {{params.flags}}"
        " --out {output} > {log} 2>&1"
