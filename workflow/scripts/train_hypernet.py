#!/usr/bin/env python
"""train_hypernet: the DeepSets hypernetwork, trained and validated on PUBLIC data only.

1. noise-aware regression of the public LoRA bank (dpdeepsets.hypernet.train_hypernet);
2. with hypernet.e2e_steps > 0, end-to-end training on the denoising loss of public k-NN sets
   drawn on the fly (dpdeepsets.hypernet_e2e.train_end_to_end);
3. validation on the proxy sets of the held-out public validation pool: denoising loss of the
   generated LoRA, the nearest and the mean public LoRA and the base model at every epsilon
   (--out-validation; dpdeepsets.hypernet_e2e.validate).
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging, write_json

SECTIONS = ["hypernet", "privacy", "subsets", "lora"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="public embeddings .npy")
    p.add_argument("--subsets", required=True, help="public subsets .npz (the bank's)")
    p.add_argument("--bank", required=True, help="gathered public LoRA bank .safetensors")
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--public", required=True, help="public pool .npz")
    p.add_argument("--validation", required=True, help="public validation pool .npz")
    p.add_argument("--validation-embeddings", required=True, help="its embeddings .npy")
    p.add_argument("--proxies", required=True, help="proxy sets .npz (of the validation pool)")
    p.add_argument("--out", required=True, help="hypernetwork checkpoint .pt")
    p.add_argument("--out-summary", required=True, help="training summary .json")
    p.add_argument("--out-validation", required=True, help="validation table .csv")
    p.add_argument("--checkpoint-dir", help="work directory of periodic checkpoints "
                                            "(default: <out>.ckpt beside the output)")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)
    h, priv = cfg["hypernet"], cfg["privacy"]
    log = setup_logging("train_hypernet")
    set_threads(args.threads)
    import numpy as np
    import pandas as pd
    import torch

    from dpdeepsets import data, diffusion, hypernet, hypernet_e2e, lora, privacy
    from dpdeepsets.checkpoint import Checkpointer
    from dpdeepsets.generators import subset_means
    from dpdeepsets.seeds import derive_seed
    from dpdeepsets.tables import write_csv

    emb = np.load(args.embeddings)
    members = np.load(args.subsets)["members"]
    bank, basis, ids, meta = lora.load_lora_bank(args.bank)
    rank = int(meta["rank"])
    targets = lora.targets_from_bank(basis, bank)
    n = cfg["subsets"]["set_size"]
    # The sigmas the release will use for a private set of the configured size: public
    # information (n, C, adjacency, epsilon grid, delta), so training on them costs nothing.
    sens = privacy.clipped_mean_sensitivity(n, priv["clip_norm"], priv["adjacency"])
    grid = {float(e): privacy.analytic_gaussian_sigma(e, priv["delta"], sens) for e in priv["epsilons"]}
    sigmas = [0.0] + list(grid.values())
    log.info("training sigmas (n=%d, sensitivity %.4g): %s", n, sens, ", ".join(f"{s:.4g}" for s in sigmas))
    hp = {"emb_dim": emb.shape[1], "rank": rank, "clip_norm": priv["clip_norm"],
          "d_model": h["d_model"], "layers": h["layers"], "heads": h["heads"]}
    torch.manual_seed(h["seed"])  # the initial weights depend on the seed alone
    net = hypernet.HyperNet(hp["emb_dim"], targets, rank, clip_norm=hp["clip_norm"],
                            d_model=h["d_model"], layers=h["layers"], heads=h["heads"])
    net.set_target_stats(bank)
    clipped = privacy.clip_rows(emb, priv["clip_norm"])
    ckpt = Checkpointer.for_output(args.out, h["checkpoint_every"], args.checkpoint_dir)
    with Stopwatch(log, "bank regression") as sw:
        curve = hypernet.train_hypernet(
            net, clipped, members, bank, sigmas, steps=h["steps"], batch_size=h["batch_size"],
            lr=h["lr"], weight_decay=h["weight_decay"], subsample_fraction=h["subsample_fraction"],
            seed=h["seed"], checkpoint=ckpt)
    device = pick_device()
    unet, scheduler = diffusion.load_base(args.base)
    unet.to(device)
    layers = lora.attach(unet, targets, {k: v.to(device) for k, v in basis.items()},
                         float(meta["alpha"]) / rank)
    net.to(device)
    e2e = []
    if h["e2e_steps"]:
        public, _ = data.load_split(args.public)
        sets = hypernet_e2e.knn_sets(emb, anchors=h["e2e_anchors"], k=n,
                                     seed=derive_seed(h["seed"], "e2e_anchors"))
        with Stopwatch(log, f"end-to-end training ({h['e2e_steps']} steps)"):
            e2e = hypernet_e2e.train_end_to_end(
                net, unet, scheduler, layers, diffusion.images_to_tensor(public).to(device), clipped,
                sets, sigmas, steps=h["e2e_steps"], sets_per_step=h["e2e_sets"],
                images_per_set=h["e2e_images"], lr=h["e2e_lr"], seed=derive_seed(h["seed"], "e2e"))
    net.eval().requires_grad_(False)
    val_images, _ = data.load_split(args.validation, mmap=True)
    val_emb = privacy.clip_rows(np.load(args.validation_embeddings), priv["clip_norm"])
    proxies = np.load(args.proxies)["members"]
    with Stopwatch(log, f"validation on {len(proxies)} public proxy sets"):
        rows = hypernet_e2e.validate(
            net, unet, scheduler, layers, bank, subset_means(emb, members, priv["clip_norm"]),
            [diffusion.images_to_tensor(np.asarray(val_images[m])).to(device) for m in proxies],
            val_emb[proxies].mean(axis=1), grid, draws=h["validation_draws"],
            seed=derive_seed(h["seed"], "validation"))
    summary = hypernet_e2e.summarise(rows)
    write_csv(args.out_validation, pd.DataFrame(rows))
    hypernet.save_hypernet(args.out, net.cpu(), targets, basis, hp,
                           {"alpha": meta["alpha"], "train_sigmas": sigmas})
    first, last = float(np.mean(curve[:50])), float(np.mean(curve[-50:]))
    write_json(args.out_summary, {
        "regression_loss_first50": first, "regression_loss_last50": last,
        "e2e_loss_first50": float(np.mean(e2e[:50])) if e2e else None,
        "e2e_loss_last50": float(np.mean(e2e[-50:])) if e2e else None,
        "train_sigmas": sigmas, "regression_seconds": sw.seconds, "num_subsets": int(len(members)),
        "validation": summary["table"]})
    log.info("validation (mean over proxy sets; gain = %% lower denoising loss than the base model):\n%s",
             pd.DataFrame(summary["table"]).to_string())
    log.info("regression loss %.4f -> %.4f; wrote %s", first, last, args.out)
    ckpt.clear()


if __name__ == "__main__":
    cli.run(main)
