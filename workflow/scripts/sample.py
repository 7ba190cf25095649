#!/usr/bin/env python
"""sample: DDIM samples of one or more cells, their Inception features and class labels.

Several adapters (one per epsilon of a method's grid) are sampled in one batched pass
(dpdeepsets.sampling: the same starting noise for every cell, equal to sampling each alone);
no --adapter samples the base model. For every cell it writes the samples (.npz, uint8), a
grid (.png) and the features (.npz: Inception pool3 features and, with --classifier, the
public digit classifier's labels). Everything here is post-processing of the adapters.
"""

from dpdeepsets import cli
from dpdeepsets.io import Stopwatch, pick_device, set_threads, setup_logging

SECTIONS = ["sampling", "evaluation"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--base", required=True, help="base model directory")
    p.add_argument("--adapter", nargs="+", default=None,
                   help="PEFT adapter directories, one per cell (omit for the base model)")
    p.add_argument("--classifier", help="digit classifier .npz (fit_digit_classifier)")
    p.add_argument("--inception-runtime", default="torch", help="torch, onnxruntime or auto")
    p.add_argument("--inception-cache", help="the Inception ONNX export's directory (rule inception_onnx)")
    p.add_argument("--seed", type=int, required=True, help="sampling seed (the same for every method)")
    p.add_argument("--out", nargs="+", required=True, help="samples .npz (uint8 [N,H,W,C]) per cell")
    p.add_argument("--out-grid", nargs="+", required=True, help="sample grid .png per cell")
    p.add_argument("--out-features", nargs="+", required=True, help="features .npz per cell")
    args = p.parse_args()
    adapters = args.adapter or [None]
    if not len(adapters) == len(args.out) == len(args.out_grid) == len(args.out_features):
        raise ValueError(f"{len(adapters)} adapter(s), {len(args.out)} --out, {len(args.out_grid)} "
                         f"--out-grid and {len(args.out_features)} --out-features: one of each per cell")
    cfg = cli.read_settings(args, SECTIONS)
    s, ev = cfg["sampling"], cfg["evaluation"]
    log = setup_logging("sample")
    set_threads(args.threads)
    from dpdeepsets import classifier, diffusion, sampling
    from dpdeepsets.metrics import InceptionFeatures

    device = pick_device()
    unet, scheduler = diffusion.load_base(args.base)
    unet.to(device)
    with Stopwatch(log, f"{len(adapters)} cell(s) x {s['num_samples']} samples x {s['ddim_steps']} DDIM steps"):
        cells = sampling.sample_adapters(unet, scheduler, adapters, num_samples=s["num_samples"],
                                         steps=s["ddim_steps"], seed=args.seed,
                                         batch_size=s["batch_size"], eta=s["eta"], device=device)
    extractor = InceptionFeatures(device=device, batch_size=ev["batch_size"],
                                  runtime=args.inception_runtime, cache_dir=args.inception_cache,
                                  threads=args.threads)
    labeller = classifier.load(args.classifier) if args.classifier else None
    with Stopwatch(log, f"Inception features of {len(cells)} x {s['num_samples']} samples"):
        sampling.write_cells(cells, args.out, args.out_grid, args.out_features, extractor=extractor,
                             labeller=labeller, grid_size=s["grid_size"], log=log)


if __name__ == "__main__":
    cli.run(main)
