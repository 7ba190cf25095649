# DP-DeepSets (arXiv 2606.26772) as a Snakemake pipeline: the table of contents.
#
#   snakemake --cores 2                                   # the embedded default (config/config.yaml)
#   snakemake --cores 2 --configfile config/test.yaml     # the tiny CI config
#   snakemake --cores 2 tune_baselines                    # choose the baselines' values on public proxies
#   snakemake --cores 2 synthetic                         # the synthetic linear-regression comparison
#
# Which methods are compared, and how each is made, comes from the method registry
# (dpdeepsets/methods.py). Stages, in DAG order (one file each under workflow/rules/):
#   data.smk       prepare_data                    public / public-validation / private pools
#   base.smk       pretrain_base                   diffusion UNet on public data
#   embed.smk      fit_embedder, embed             public-only encoder, embeddings
#   subsets.smk    build_subsets                   k-NN sets (public, proxy and private sets)
#   bank.smk       fit_bank_shard, gather_bank     one LoRA per public subset (sharded)
#   hypernet.smk   train_hypernet                  noise-aware DeepSets hypernetwork
#   release.smk    noise_key, release_embedding    THE DP STEP (the secret key; the release)
#   generate.smk   generate_lora, generate_public  release / public bank -> PEFT adapter
#   baselines.smk  fit_baseline, fit_nonprivate    DP-SGD family and the non-private references
#   evolve.smk     private_evolution               the training-free peer (samples, no adapter)
#   sample.smk     sample, sample_reference, sample_public   DDIM samples + their features
#   evaluate.smk   private_set_features, score     FID / KID / PRDC / class histograms
#   report.smk     report, sample_figure           tables, ledger, privacy budget, figures
#   tuning.smk     tune_baselines                  baselines' hyperparameters on public proxies
#   synthetic.smk  synthetic                       the paper's synthetic comparison


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/subsets.smk"
include: "workflow/rules/bank.smk"
include: "workflow/rules/hypernet.smk"
include: "workflow/rules/release.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evolve.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tuning.smk"
include: "workflow/rules/synthetic.smk"


rule all:
    default_target: True
    input:
        REPORT_OUTPUTS,
