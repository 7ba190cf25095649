rule fit_embedder:
    """Fit the embedding projection on public images only."""
    input:
        public=f"{R}/data/public.npz",
    output:
        f"{R}/embedder/projection.npz",
    params:
        settings=settings("embedder"),
    threads: THREADS
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("encoder"),
    conda:
        ENV
    log:
        f"{R}/logs/fit_embedder.log",
    benchmark:
        f"{R}/benchmarks/fit_embedder.tsv"
    shell:
        f"python {SCRIPTS}/fit_embedder.py --settings {{params.settings}}"
        " --threads {threads} --public {input.public} --out {output} > {log} 2>&1"


rule embed:
    """Embed one pool with the fixed encoder (private embeddings stay private)."""
    input:
        images=f"{R}/data/{{pool}}.npz",
        projection=f"{R}/embedder/projection.npz",
    output:
        f"{R}/embeddings/{{pool}}.npy",
    params:
        settings=settings("embedder"),
    threads: THREADS
    priority: PRIORITY_CRITICAL
    resources:
        **stage_resources("encoder"),
    conda:
        ENV
    log:
        f"{R}/logs/embed_{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/embed_{{pool}}.tsv"
    shell:
        f"python {SCRIPTS}/embed.py --settings {{params.settings}} --threads {{threads}}"
        " --images {input.images} --projection {input.projection} --out {output} > {log} 2>&1"
