#!/usr/bin/env python
"""train_hypernet: noise-aware training of the DeepSets hypernetwork on PUBLIC subsets only."""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, set_threads, setup_logging, write_json

SECTIONS = ["hypernet", "privacy", "subsets", "lora"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="public embeddings .npy")
    p.add_argument("--subsets", required=True, help="public subsets .npz")
    p.add_argument("--bank", required=True, help="gathered public LoRA bank .safetensors")
    p.add_argument("--out", required=True, help="hypernetwork checkpoint .pt")
    p.add_argument("--out-summary", required=True, help="training summary .json")
    p.add_argument("--checkpoint-dir", help="work directory of periodic checkpoints "
                                            "(default: <out>.ckpt beside the output)")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)
    h, priv = cfg["hypernet"], cfg["privacy"]
    log = setup_logging("train_hypernet")
    set_threads(args.threads)
    import numpy as np
    import torch

    from dpdeepsets import hypernet, lora, privacy
    from dpdeepsets.checkpoint import Checkpointer

    emb = np.load(args.embeddings)
    members = np.load(args.subsets)["members"]
    bank, basis, ids, meta = lora.load_lora_bank(args.bank)
    rank = int(meta["rank"])
    targets = lora.targets_from_bank(basis, bank)
    # The sigmas the release will use for a private set of the configured size: public
    # information (n, C, adjacency, epsilon grid, delta), so training on them costs nothing.
    sens = privacy.clipped_mean_sensitivity(cfg["subsets"]["set_size"], priv["clip_norm"],
                                            priv["adjacency"])
    sigmas = [0.0] + [privacy.analytic_gaussian_sigma(e, priv["delta"], sens)
                      for e in priv["epsilons"]]
    log.info("training sigmas (n=%d, sensitivity %.4g): %s", cfg["subsets"]["set_size"], sens,
             ", ".join(f"{s:.4g}" for s in sigmas))
    hp = {"emb_dim": emb.shape[1], "rank": rank, "clip_norm": priv["clip_norm"],
          "d_model": h["d_model"], "layers": h["layers"], "heads": h["heads"]}
    torch.manual_seed(h["seed"])  # the initial weights depend on the seed alone
    net = hypernet.HyperNet(hp["emb_dim"], targets, rank, clip_norm=hp["clip_norm"],
                            d_model=h["d_model"], layers=h["layers"], heads=h["heads"])
    net.set_target_stats(bank)
    ckpt = Checkpointer.for_output(args.out, h["checkpoint_every"], args.checkpoint_dir)
    with Stopwatch(log, "train_hypernet") as sw:
        curve = hypernet.train_hypernet(
            net, privacy.clip_rows(emb, priv["clip_norm"]), members, bank, sigmas,
            steps=h["steps"], batch_size=h["batch_size"], lr=h["lr"],
            weight_decay=h["weight_decay"], subsample_fraction=h["subsample_fraction"],
            seed=h["seed"], checkpoint=ckpt)
    hypernet.save_hypernet(args.out, net.eval(), targets, basis, hp,
                           {"alpha": meta["alpha"], "train_sigmas": sigmas})
    first, last = float(np.mean(curve[:50])), float(np.mean(curve[-50:]))
    write_json(args.out_summary, {"loss_first50": first, "loss_last50": last,
                                  "train_sigmas": sigmas, "seconds": sw.seconds,
                                  "num_subsets": int(len(members))})
    log.info("loss %.4f -> %.4f; wrote %s", first, last, args.out)
    ckpt.clear()


if __name__ == "__main__":
    cli.run(main)
