# DP-DeepSets (arXiv 2606.26772) as a Snakemake pipeline: the table of contents.
#
#   snakemake --cores 2                      # the embedded default (config/config.yaml)
#   snakemake --cores 2 --configfile config/test.yaml
#
# Stages, in DAG order (one file each under workflow/rules/):
#   data.smk      prepare_data                public / private pools
#   base.smk      pretrain_base               diffusion UNet on public data
#   embed.smk     fit_embedder, embed         public-only encoder, embeddings
#   subsets.smk   build_subsets               k-NN sets (public subsets, private sets)
#   lora.smk      fit_lora, gather_loras      one LoRA per public subset (sharded)
#   hypernet.smk  train_hypernet              noise-aware DeepSets hypernetwork
#   release.smk   release_embedding           THE DP STEP (the only private release)
#                 generate_lora               noisy embedding -> PEFT adapter
#   sample.smk    sample, sample_reference    DDIM samples: a DP method's epsilon grid per set / seed;
#                                             the epsilon = inf references and the base model
#   evaluate.smk  reference_features, evaluate, evaluate_reference   FID / KID per private set
#   report.smk    report, sample_figure       metrics.csv, ledger, plots; the sample figure

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/subsets.smk"
include: "workflow/rules/lora.smk"
include: "workflow/rules/hypernet.smk"
include: "workflow/rules/release.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/synthetic.smk"


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
