rule train_hypernet:
    """Public: noise-aware training of the DeepSets hypernetwork on the public LoRA bank."""
    input:
        embeddings=f"{R}/embeddings/public.npy",
        subsets=f"{R}/subsets/public.npz",
        bank=f"{R}/lora/public_loras.safetensors",
    output:
        model=f"{R}/hypernet/hypernet.pt",
        summary=f"{R}/hypernet/summary.json",
    params:
        settings=settings("hypernet", "privacy", "subsets", "lora"),
    threads: THREADS_HEAVY
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("cpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/train_hypernet.log",
    benchmark:
        f"{R}/benchmarks/train_hypernet.tsv"
    shell:
        f"python {SCRIPTS}/train_hypernet.py --settings {{params.settings}}"
        " --threads {threads} --embeddings {input.embeddings} --subsets {input.subsets}"
        " --bank {input.bank} --out {output.model} --out-summary {output.summary} > {log} 2>&1"
