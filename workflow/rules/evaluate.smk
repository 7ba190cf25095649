# Scoring. The Inception network and the digit classifier are public; the private sets'
# features and labels are EVALUATION ONLY: they score the methods and are never released.


rule inception_onnx:
    """Public: the bundled pool3 Inception TorchScript exported to ONNX once (the fast CPU runtime)."""
    output:
        directory(INCEPTION_CACHE),
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/inception_onnx.log",
    benchmark:
        f"{R}/benchmarks/inception_onnx.tsv"
    shell:
        "python -m dpdeepsets.inception_onnx {output} > {log} 2>&1"


rule fit_digit_classifier:
    """Public: a classifier of the labelled public pool (labels the samples for the class histograms)."""
    input:
        public=f"{R}/data/public.npz",
        validation=f"{R}/data/validation.npz",
    output:
        f"{R}/eval/digit_classifier.npz",
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/fit_digit_classifier.log",
    benchmark:
        f"{R}/benchmarks/fit_digit_classifier.tsv"
    shell:
        f"python {SCRIPTS}/fit_digit_classifier.py --public {{input.public}}"
        " --validation {input.validation} --out {output} > {log} 2>&1"


rule private_set_features:
    """EVALUATION ONLY: Inception features and label histograms of every private set (never released)."""
    input:
        unpack(inception_input),
        private=f"{R}/data/private.npz",
        sets=f"{R}/subsets/private.npz",
    output:
        f"{R}/eval/private_sets.npz",
    params:
        settings=settings("evaluation"),
        inception=inception_flag,
    threads: THREADS
    resources:
        **stage_resources("encoder"),
    conda:
        ENV
    log:
        f"{R}/logs/private_set_features.log",
    benchmark:
        f"{R}/benchmarks/private_set_features.tsv"
    shell:
        f"python {SCRIPTS}/private_set_features.py --settings {{params.settings}} --threads {{threads}}"
        " {params.inception} --private {input.private} --sets {input.sets} --out {output} > {log} 2>&1"


rule score:
    """EVALUATION ONLY: FID, KID, precision/recall and class-histogram distance of one method's cells against every private set."""
    input:
        features=lambda wc: sorted({features_path(*c) for c in cells() if c[0] == wc.method}),
        private=f"{R}/eval/private_sets.npz",
    output:
        f"{R}/eval/scores/{{method}}.csv",
    params:
        settings=settings("evaluation"),
    resources:
        **stage_resources("light"),
    conda:
        ENV
    log:
        f"{R}/logs/score/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{method}}.tsv"
    shell:
        f"python {SCRIPTS}/score.py --settings {{params.settings}} --features {{input.features}}"
        " --private {input.private} --out {output} > {log} 2>&1"
