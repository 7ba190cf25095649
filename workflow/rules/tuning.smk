# Hyperparameters of the gradient-fitted methods, chosen on PUBLIC proxy sets (k-NN sets of the
# held-out public validation pool, the same size n as the private sets) by the pipeline's own
# sampler and evaluator, at no privacy cost. Not part of `all` (unless baselines.tuning.auto
# and no tuned values: then the fits read chosen.yaml inside the DAG):
#
#   snakemake --cores 2 tune_baselines     # -> results/tuning/chosen.yaml (paste into the config)

TUNED_METHODS = methods_where(lambda m: m.producer in ("fit_baseline", "evolve")
                              and not m.bank_recipe)  # the bank-recipe reference is untuned by definition
TUNING_REFERENCE = "base"  # scored on every proxy: what a tuned method must beat
PROXIES = [f"q{i}" for i in range(config["baselines"]["tuning"]["proxies"])]


rule tune_baselines_proxy:
    """Public: every tuning candidate of one method (or the base model) on one proxy set, at every tuned epsilon."""
    input:
        unpack(tuning_inputs),
        unpack(inception_input),
        base=f"{R}/base",
        validation=f"{R}/data/validation.npz",
        sets=f"{R}/subsets/validation.npz",
    output:
        f"{R}/tuning/{{method}}/{{proxy}}.csv",
    wildcard_constraints:
        proxy=r"q\d+",
    params:
        settings=tuning_settings,
        flags=tuning_flags,
        inception=inception_flag,
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/tuning/{{method}}_{{proxy}}.log",
    benchmark:
        f"{R}/benchmarks/tuning/{{method}}_{{proxy}}.tsv"
    shell:
        f"python {SCRIPTS}/tune_baselines.py --settings {{params.settings}} --threads {{threads}}"
        " --method {wildcards.method} --proxy {wildcards.proxy} --base {input.base}"
        " --validation {input.validation} --sets {input.sets} {params.flags} {params.inception}"
        " --out {output} > {log} 2>&1"


rule tune_baselines:
    """Public: the best candidate per (method, epsilon) by mean proxy FID -> baselines.tuned entries."""
    input:
        expand(f"{R}/tuning/{{method}}/{{proxy}}.csv", method=TUNED_METHODS + [TUNING_REFERENCE],
               proxy=PROXIES),
    output:
        chosen=f"{R}/tuning/chosen.yaml",
        table=f"{R}/tuning/summary.csv",
    params:
        tuned_for=shlex.quote(json.dumps(tuned_context(config), sort_keys=True)),
        epsilons=shlex.quote(json.dumps(config["privacy"]["epsilons"])),
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/tuning/choose.log",
    shell:
        f"python {SCRIPTS}/tune_baselines.py --choose {{input}} --out-chosen {{output.chosen}}"
        " --out-table {output.table} --tuned-for {params.tuned_for} --epsilons {params.epsilons}"
        " > {log} 2>&1"
