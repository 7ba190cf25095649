rule train_hypernet:
    """Public: noise-aware training of the DeepSets hypernetwork (regression of the LoRA bank; then end to end through the UNet only when hypernet.e2e_steps > 0, default 0), validated on public proxy sets."""
    input:
        embeddings=f"{R}/embeddings/public.npy",
        subsets=f"{R}/subsets/public.npz",
        bank=f"{R}/lora/public_loras.safetensors",
        base=f"{R}/base",
        public=f"{R}/data/public.npz",
        validation=f"{R}/data/validation.npz",
        validation_embeddings=f"{R}/embeddings/validation.npy",
        proxies=f"{R}/subsets/validation.npz",
    output:
        model=f"{R}/hypernet/hypernet.pt",
        summary=f"{R}/hypernet/summary.json",
        validation=f"{R}/hypernet/validation.csv",
    params:
        settings=settings("hypernet", "privacy", "subsets", "lora"),
    threads: THREADS_HEAVY
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/train_hypernet.log",
    benchmark:
        f"{R}/benchmarks/train_hypernet.tsv"
    shell:
        f"python {SCRIPTS}/train_hypernet.py --settings {{params.settings}}"
        " --threads {threads} --embeddings {input.embeddings} --subsets {input.subsets}"
        " --bank {input.bank} --base {input.base} --public {input.public}"
        " --validation {input.validation} --validation-embeddings {input.validation_embeddings}"
        " --proxies {input.proxies} --out {output.model} --out-summary {output.summary}"
        " --out-validation {output.validation} > {log} 2>&1"
