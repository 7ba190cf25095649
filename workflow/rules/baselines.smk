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
    """DP (opacus accountant) for dpsgd / public_ft_dpsgd / pda_dpmd; nonprivate (eps=inf) is a NON-private reference."""
    input:
        unpack(baseline_inputs),
        base=f"{R}/base",
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        adapter=directory(f"{R}/adapters/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}"),
        ledger=f"{R}/ledger/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json",
    wildcard_constraints:
        method="dpsgd|public_ft_dpsgd|pda_dpmd|nonprivate",
    params:
        settings=settings("baselines", "lora", "privacy"),
        flags=baseline_flags,
    threads: THREADS_HEAVY
    resources:
        **stage_resources("gpu_train"),
    conda:
        "../../envs/dpdeepsets.yaml"
    log:
        f"{R}/logs/fit_baseline/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fit_baseline/{{method}}_{{pset}}_eps{{eps}}_seed{{seed}}.tsv"
    shell:
        "python workflow/scripts/fit_baseline.py --settings {params.settings} --threads {threads}"
        " --method {wildcards.method} --base {input.base} --private {input.private}"
        " --sets {input.sets} --pset {wildcards.pset} {params.flags} --epsilon {wildcards.eps}"
        " --seed {wildcards.seed} --out {output.adapter} --out-ledger {output.ledger} > {log} 2>&1"
