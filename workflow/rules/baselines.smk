# Gradient-based LoRA baselines on the same private sets (dpdeepsets.dpsgd.train_lora):
# dpsgd, public_ft_dpsgd, pda_dpmd (DP via opacus' accountant) and nonprivate (a reference).


rule fit_public_lora:
    """Public: one LoRA fitted without noise on the public pool (start of public_ft_dpsgd / pda_dpmd)."""
    input:
        base=f"{R}/base",
        public=f"{R}/data/public.npz",
    output:
        directory(f"{R}/adapters/public_lora"),
    params:
        settings=settings("baselines", "lora", "privacy"),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/fit_public_lora.log",
    benchmark:
        f"{R}/benchmarks/fit_public_lora.tsv"
    shell:
        "python workflow/scripts/fit_baseline.py --settings {params.settings} --threads {threads}"
        " --method public_lora --base {input.base} --public {input.public} --out {output} > {log} 2>&1"


rule fit_baseline:
    """DP (opacus accountant): dpsgd / public_ft_dpsgd / pda_dpmd on one private set, one run per finite epsilon, one process."""
    input:
        unpack(baseline_inputs),
        base=f"{R}/base",
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        adapters=[directory(p) for p in per_epsilon(f"{R}/adapters/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}")],
        ledgers=per_epsilon(f"{R}/ledger/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    wildcard_constraints:
        method="|".join(DPSGD_METHODS),
    params:
        settings=settings("baselines", "lora", "privacy"),
        flags=baseline_flags,
        eps=" ".join(FINITE_EPSILONS),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/fit_baseline/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fit_baseline/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/fit_baseline.py --settings {params.settings} --threads {threads}"
        " --method {wildcards.method} --base {input.base} --private {input.private}"
        " --sets {input.sets} --pset {wildcards.pset} {params.flags} --epsilon {params.eps}"
        " --seed {wildcards.seed} --out {output.adapters} --out-ledger {output.ledgers} > {log} 2>&1"


rule fit_nonprivate:
    """NOT private: a LoRA fitted on one private set without noise (eps = inf), the nonprivate reference."""
    input:
        base=f"{R}/base",
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        adapter=directory(f"{R}/adapters/nonprivate/{{pset}}/eps{{eps}}_seed{{seed}}"),
        ledger=f"{R}/ledger/nonprivate/{{pset}}/eps{{eps}}_seed{{seed}}.json",
    wildcard_constraints:
        eps="inf",
    params:
        settings=settings("baselines", "lora", "privacy"),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/fit_baseline/nonprivate_{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fit_baseline/nonprivate_{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/fit_baseline.py --settings {params.settings} --threads {threads}"
        " --method nonprivate --base {input.base} --private {input.private}"
        " --sets {input.sets} --pset {wildcards.pset} --epsilon {wildcards.eps}"
        " --seed {wildcards.seed} --out {output.adapter} --out-ledger {output.ledger} > {log} 2>&1"
