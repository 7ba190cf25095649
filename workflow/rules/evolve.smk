# Private Evolution (registry privacy class dp_samples, producer "evolve"): the training-free
# peer. Its samples come straight from the private set's noisy votes, so this rule writes what
# rule sample writes for the other methods (samples, grid, features) plus a ledger entry.


rule private_evolution:
    """DP: Private Evolution on one private set (T noisy vote histograms per epsilon, Gaussian DP), at every finite epsilon."""
    input:
        unpack(key_input),
        unpack(classifier_input),
        unpack(inception_input),
        unpack(tuned_input),
        base=f"{R}/base",
        embeddings=f"{R}/embeddings/private.npy",
        sets=f"{R}/subsets/private.npz",
        projection=f"{R}/embedder/projection.npz",
    output:
        samples=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
        grids=per_epsilon(f"{R}/samples/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.png"),
        features=per_epsilon(f"{R}/features/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.npz"),
        ledgers=per_epsilon(f"{R}/ledger/{{method}}/{{pset}}/eps{{eps}}_seed{{seed}}.json"),
    wildcard_constraints:
        method=alternatives(EVOLVED),
        pset=r"p\d+",
    params:
        n=SET_SIZE,
        settings=settings("private_evolution", "privacy", "sampling", "evaluation", "embedder"),
        key=key_flag,
        tuned=tuned_flag,
        classifier=classifier_flag,
        inception=inception_flag,
        eps=" ".join(FINITE_EPSILONS),
    threads: THREADS_HEAVY
    resources:
        **stage_resources("sampling"),
    conda:
        ENV
    log:
        f"{R}/logs/private_evolution/{{method}}_{{pset}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/private_evolution/{{method}}_{{pset}}_seed{{seed}}.tsv"
    shell:
        f"python {SCRIPTS}/private_evolution.py --settings {{params.settings}} --threads {{threads}}"
        " --base {input.base} --embeddings {input.embeddings} --sets {input.sets}"
        " --pset {wildcards.pset} --n {params.n} --projection {input.projection} {params.key}"
        " {params.classifier} {params.inception} {params.tuned} --epsilon {params.eps} --seed {wildcards.seed}"
        " --out {output.samples} --out-grid {output.grids} --out-features {output.features}"
        " --out-ledger {output.ledgers} > {log} 2>&1"
