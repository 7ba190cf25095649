# The public LoRA bank: one gauge-fixed LoRA per public k-NN subset (the hypernetwork's targets).


rule fit_bank_shard:
    """Public: one gauge-fixed LoRA per public subset; a shard of lora.shard_size subsets fitted together."""
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
        ENV
    log:
        f"{R}/logs/fit_bank_shard_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/fit_bank_shard_{{shard}}.tsv"
    shell:
        f"python {SCRIPTS}/fit_bank_shard.py --settings {{params.settings}} --threads {{threads}}"
        " --base {input.base} --public {input.public} --subsets {input.subsets}"
        " --shard {wildcards.shard} --out {output} > {log} 2>&1"


rule gather_bank:
    """Public: concatenate the shards into one LoRA bank."""
    input:
        expand(f"{R}/lora/shards/{{shard}}.safetensors", shard=range(N_SHARDS)),
    output:
        f"{R}/lora/public_loras.safetensors",
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/gather_bank.log",
    benchmark:
        f"{R}/benchmarks/gather_bank.tsv"
    shell:
        f"python {SCRIPTS}/gather_bank.py --shards {{input}} --out {{output}} > {{log}} 2>&1"
