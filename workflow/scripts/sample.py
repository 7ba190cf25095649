#!/usr/bin/env python
"""sample: DDIM samples from the base model, with a PEFT LoRA adapter loaded by peft if given.

Several adapters (one per epsilon of a method's grid) are sampled in one process: pass as many
--out and --out-grid paths as --adapter paths.  Every cell starts from the freshly loaded base
model and uses the same seed, so its samples equal those of a process of its own.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["sampling"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--adapter", nargs="+", default=None,
                   help="PEFT adapter directories, one per output (omit for the base model)")
    p.add_argument("--seed", type=int, required=True, help="sampling seed (same for every method)")
    p.add_argument("--out", nargs="+", required=True, help="samples .npz (uint8 [N,H,W,C]) per cell")
    p.add_argument("--out-grid", nargs="+", required=True, help="sample grid .png per cell")
    args = p.parse_args()
    adapters = args.adapter or [None]
    if not len(adapters) == len(args.out) == len(args.out_grid):
        raise ValueError(f"{len(adapters)} adapter(s), {len(args.out)} --out and "
                         f"{len(args.out_grid)} --out-grid paths: give one of each per cell")
    s = cli.read_settings(args, SECTIONS)["sampling"]
    log = setup_logging("sample")
    set_threads(args.threads)
    from dpdeepsets import diffusion, lora
    from dpdeepsets.data import save_split
    from dpdeepsets.report import save_image_grid

    device = pick_device()
    for adapter, out, out_grid in zip(adapters, args.out, args.out_grid):
        unet, scheduler = diffusion.load_base(args.base)
        if adapter:
            lora.load_adapter_with_peft(unet, adapter)
            log.info("loaded adapter %s with peft", adapter)
        unet.to(device)
        with Stopwatch(log, f"{s['num_samples']} samples x {s['ddim_steps']} DDIM steps"):
            x = diffusion.ddim_sample(unet, scheduler, num_samples=s["num_samples"],
                                      steps=s["ddim_steps"], seed=args.seed,
                                      batch_size=s["batch_size"], eta=s["eta"], device=device)
        images = diffusion.tensor_to_images(x)
        save_split(out, images, None)
        save_image_grid(out_grid, images[: s["grid_size"] ** 2], ncols=s["grid_size"])
        log.info("wrote %s and %s", out, out_grid)


if __name__ == "__main__":
    cli.run(main)
