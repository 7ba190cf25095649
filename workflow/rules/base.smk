rule pretrain_base:
    """Train the base DDPM UNet on the public pool (or import base.pretrained_dir)."""
    input:
        public=f"{R}/data/public.npz",
    output:
        directory(f"{R}/base"),
    params:
        settings=settings("base", "data"),
    threads: THREADS_BASE
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/pretrain_base.log",
    benchmark:
        f"{R}/benchmarks/pretrain_base.tsv"
    shell:
        f"python {SCRIPTS}/pretrain_base.py --settings {{params.settings}}"
        " --threads {threads} --public {input.public} --out {output} > {log} 2>&1"
