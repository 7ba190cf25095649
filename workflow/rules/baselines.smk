# Gradient-based LoRA fits (dpdeepsets.baselines.fit_lora, one loop): the DP-SGD methods of the
# registry (privacy class dp_sgd) at every finite epsilon, and the nonprivate reference.


rule fit_public_pool_lora:
    """Public: one LoRA fitted without noise on the whole public pool (the start of public_ft_dpsgd / pda_dpmd)."""
    input:
        base=f"{R}/base",
        public=f"{R}/data/public.npz",
    output:
        directory(f"{R}/adapters/public_pool_lora"),
    params:
        settings=settings("baselines", "lora"),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/fit_public_pool_lora.log",
    benchmark:
        f"{R}/benchmarks/fit_public_pool_lora.tsv"
    shell:
        f"python {SCRIPTS}/fit_baseline.py --settings {{params.settings}} --threads {{threads}}"
        " --public-pool --base {input.base} --public {input.public} --out {output} > {log} 2>&1"


rule fit_baseline:
    """DP (DP-SGD, accounted by dpdeepsets.privacy): one method on one private set, one independent fit per finite epsilon."""
    input:
        unpack(key_input),
        unpack(baseline_inputs),
        unpack(tuned_input),
        base=f"{R}/base",
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        adapters=[directory(p) for p in per_epsilon(f"{R}/adapters/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}")],
        ledgers=per_epsilon(f"{R}/ledger/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    wildcard_constraints:
        method=alternatives(FITTED_DP),
        pset=r"p\d+",
    params:
        n=SET_SIZE,
        settings=settings("baselines", "lora", "privacy"),
        flags=baseline_flags,
        key=key_flag,
        tuned=tuned_flag,
        eps=" ".join(FINITE_EPSILONS),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/fit_baseline/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fit_baseline/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/fit_baseline.py --settings {{params.settings}} --threads {{threads}}"
        " --method {wildcards.method} --base {input.base} --private {input.private}"
        " --sets {input.sets} --pset {wildcards.pset} --n {params.n} {params.key}"
        " {params.flags} {params.tuned} --epsilon {params.eps} --seed {wildcards.seed}"
        " --out {output.adapters} --out-ledger {output.ledgers} > {log} 2>&1"


rule fit_nonprivate:
    """NOT private: a LoRA fitted on one private set without noise (eps = inf), the nonprivate reference."""
    input:
        unpack(tuned_input),
        base=f"{R}/base",
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        adapter=directory(f"{R}/adapters/{{method}}/{{pset}}/epsinf_seed{{seed}}"),
        ledger=f"{R}/ledger/{{method}}/{{pset}}/epsinf_seed{{seed}}.json",
    wildcard_constraints:
        method=alternatives(methods_where(lambda m: m.privacy == "nonprivate")),
        pset=r"p\d+",
    params:
        n=SET_SIZE,
        settings=settings("baselines", "lora", "privacy"),
        tuned=tuned_flag,
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        ENV
    log:
        f"{R}/logs/fit_baseline/{{method}}_{{pset}}_epsinf_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fit_baseline/{{method}}_{{pset}}_epsinf_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/fit_baseline.py --settings {{params.settings}} --threads {{threads}}"
        " --method {wildcards.method} --base {input.base} --private {input.private}"
        " --sets {input.sets} --pset {wildcards.pset} --n {params.n} {params.tuned} --epsilon inf"
        " --seed {wildcards.seed} --out {output.adapter} --out-ledger {output.ledger} > {log} 2>&1"
