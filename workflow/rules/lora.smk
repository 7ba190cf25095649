rule fit_lora:
    """One gauge-fixed LoRA per public subset; a shard of lora.shard_size subsets per job."""
    input:
        base=f"{R}/base",
        public=f"{R}/data/public.npz",
        subsets=f"{R}/subsets/public.npz",
    output:
        f"{R}/lora/shards/{{shard}}.safetensors",
    params:
        settings=settings("lora"),
    threads: THREADS_HEAVY
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("gpu_train"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/fit_lora_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/fit_lora_{{shard}}.tsv"
    shell:
        "python workflow/scripts/fit_lora.py --settings {params.settings} --threads {threads}"
        " --base {input.base} --public {input.public} --subsets {input.subsets}"
        " --shard {wildcards.shard} --out {output} > {log} 2>&1"


rule gather_loras:
    """Concatenate the shards into one public LoRA bank."""
    input:
        expand(f"{R}/lora/shards/{{shard}}.safetensors", shard=range(N_SHARDS)),
    output:
        f"{R}/lora/public_loras.safetensors",
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/gather_loras.log",
    benchmark:
        f"{R}/benchmarks/gather_loras.tsv"
    shell:
        "python workflow/scripts/gather_loras.py --shards {input} --out {output} > {log} 2>&1"
