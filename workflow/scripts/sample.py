#!/usr/bin/env python
"""sample: DDIM samples from the base model, with a PEFT LoRA adapter loaded by peft if given."""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["sampling"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory (omit for the base model)")
    p.add_argument("--seed", type=int, required=True, help="sampling seed (same for every method)")
    p.add_argument("--out", required=True, help="samples .npz (uint8 [N,H,W,C])")
    p.add_argument("--out-grid", required=True, help="sample grid .png")
    args = p.parse_args()
    s = cli.read_settings(args, SECTIONS)["sampling"]
    log = setup_logging("sample")
    set_threads(args.threads)
    from dpdeepsets import diffusion, lora
    from dpdeepsets.data import save_split
    from dpdeepsets.report import save_image_grid

    unet, scheduler = diffusion.load_base(args.base)
    if args.adapter:
        lora.load_adapter_with_peft(unet, args.adapter)
        log.info("loaded adapter %s with peft", args.adapter)
    device = pick_device()
    unet.to(device)
    with Stopwatch(log, f"{s['num_samples']} samples x {s['ddim_steps']} DDIM steps"):
        x = diffusion.ddim_sample(unet, scheduler, num_samples=s["num_samples"],
                                  steps=s["ddim_steps"], seed=args.seed,
                                  batch_size=s["batch_size"], eta=s["eta"], device=device)
    images = diffusion.tensor_to_images(x)
    save_split(args.out, images, None)
    save_image_grid(args.out_grid, images[: s["grid_size"] ** 2], ncols=s["grid_size"])
    log.info("wrote %s and %s", args.out, args.out_grid)


if __name__ == "__main__":
    cli.run(main)
