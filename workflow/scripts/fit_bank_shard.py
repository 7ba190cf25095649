#!/usr/bin/env python
"""fit_bank_shard: fit one gauge-fixed LoRA per public subset, for one shard of the public LoRA bank (batched)."""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["lora"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--public", required=True, help="public pool .npz")
    p.add_argument("--subsets", required=True, help="public subsets .npz")
    p.add_argument("--shard", type=int, required=True, help="shard index (0-based)")
    p.add_argument("--out", required=True, help="LoRA bank .safetensors for this shard")
    p.add_argument("--checkpoint-dir", help="work directory of periodic checkpoints "
                                            "(default: <out>.ckpt beside the output)")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)["lora"]
    log = setup_logging("fit_bank_shard")
    set_threads(args.threads)
    import numpy as np

    from dpdeepsets import data, diffusion, lora
    from dpdeepsets.checkpoint import Checkpointer

    device = pick_device()
    unet, scheduler = diffusion.load_base(args.base)
    unet.to(device)
    images, _ = data.load_split(args.public, mmap=True)  # reads only this shard's subsets
    members = np.load(args.subsets)["members"]
    lo, hi = args.shard * cfg["shard_size"], min((args.shard + 1) * cfg["shard_size"], len(members))
    if lo >= hi:
        raise ValueError(f"shard {args.shard} is empty ({len(members)} subsets, "
                         f"lora.shard_size={cfg['shard_size']})")
    ids = list(range(lo, hi))
    targets = lora.find_targets(unet, cfg["target_modules"], cfg["rank"])
    basis = lora.make_basis(targets, cfg["rank"], cfg["basis_seed"])
    basis_dev = {k: v.to(device) for k, v in basis.items()}
    layers = lora.attach(unet, targets, basis_dev, cfg["alpha"] / cfg["rank"])
    subsets = [diffusion.images_to_tensor(images[members[i]]).to(device) for i in ids]
    log.info("shard %d: subsets %d..%d, %d target modules, %d B parameters per LoRA",
             args.shard, lo, hi - 1, len(targets), sum(t.out_features * cfg["rank"] for t in targets))
    ckpt = Checkpointer.for_output(args.out, cfg["checkpoint_every"], args.checkpoint_dir)
    with Stopwatch(log, f"fitting {len(ids)} LoRAs"):
        b = lora.fit_loras(unet, scheduler, layers, targets, subsets, ids, rank=cfg["rank"],
                           steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                           seed=cfg["seed"], desc=f"fit_bank_shard {args.shard}",
                           device=device, checkpoint=ckpt)
    lora.save_lora_bank(args.out, b, basis, ids, {"rank": cfg["rank"], "alpha": cfg["alpha"]})
    log.info("wrote %s", args.out)
    ckpt.clear()


if __name__ == "__main__":
    cli.run(main)
