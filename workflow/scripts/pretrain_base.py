#!/usr/bin/env python
"""pretrain_base: train the base DDPM UNet on the PUBLIC pool (or import a local pretrained one)."""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["base", "data"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--public", required=True, help="public pool .npz")
    p.add_argument("--out", required=True, help="output diffusers DDPMPipeline directory")
    p.add_argument("--checkpoint-dir", help="work directory of periodic checkpoints "
                                            "(default: <out>.ckpt beside the output)")
    args = p.parse_args()
    cfg = cli.read_settings(args, SECTIONS)
    b = cfg["base"]
    log = setup_logging("pretrain_base")
    set_threads(args.threads)
    import torch

    from dpdeepsets import data, diffusion
    from dpdeepsets.checkpoint import Checkpointer

    images, _ = data.load_split(args.public)
    with Stopwatch(log, "pretrain_base"):
        if b["pretrained_dir"]:
            unet, scheduler = diffusion.load_base(b["pretrained_dir"])
            if unet.config.in_channels != images.shape[-1]:
                raise data.DataError(
                    f"base.pretrained_dir {b['pretrained_dir']} expects {unet.config.in_channels} "
                    f"channels but the data has {images.shape[-1]}")
            if unet.config.sample_size != images.shape[1]:
                raise data.DataError(
                    f"base.pretrained_dir works at {unet.config.sample_size} px but "
                    f"data.image_size is {images.shape[1]}")
            log.info("imported pretrained base from %s", b["pretrained_dir"])
        else:
            ckpt = Checkpointer.for_output(args.out, b["checkpoint_every"], args.checkpoint_dir)
            torch.manual_seed(b["seed"])  # the initial weights depend on the seed alone
            unet, scheduler = diffusion.base_from_config(b, image_size=images.shape[1],
                                                         channels=images.shape[-1])
            log.info("training %.2fM-parameter UNet on %d public images for %d steps",
                     sum(q.numel() for q in unet.parameters()) / 1e6, len(images), b["train_steps"])
            unet = diffusion.train_base(unet, scheduler, diffusion.images_to_tensor(images),
                                        steps=b["train_steps"], batch_size=b["batch_size"],
                                        lr=b["lr"], ema_decay=b["ema_decay"], seed=b["seed"],
                                        device=pick_device(), checkpoint=ckpt)
        diffusion.save_base(args.out, unet, scheduler)
        log.info("wrote %s", args.out)
        if not b["pretrained_dir"]:
            ckpt.clear()


if __name__ == "__main__":
    cli.run(main)
