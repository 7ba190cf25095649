#!/usr/bin/env python
"""Inception pool3 features per second: the pipeline's setting vs the previous one.

    python benchmarks/inception_throughput.py [--images 64] [--threads 1]

Times :class:`dpdeepsets.metrics.InceptionFeatures` (clean resize + the FID Inception) on the
same random 16x16 uint8 images at batch 50 with contiguous (NCHW) input, clean-fid's default
and the pipeline's until session 3, and at the pipeline's batch 8 with channels-last input.
Prints seconds per image, the ratio, and the largest feature difference (the features must
not depend on the setting). Measured in one run so
the ratio holds on a noisy machine; run it idle.
"""

import argparse
import time

import numpy as np
import torch

from dpdeepsets.metrics import InceptionFeatures


def timed(extractor, images):
    extractor(images[:2])  # warm-up: first-call allocations
    t = time.perf_counter()
    feats = extractor(images)
    return (time.perf_counter() - t) / len(images), feats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 16, 16, 1), dtype=np.uint8)
    large = InceptionFeatures(batch_size=50, progress=False, channels_last=False)
    small = InceptionFeatures(batch_size=8, progress=False, channels_last=True)
    t_large, f_large = timed(large, images)
    t_small, f_small = timed(small, images)
    print(f"{args.images} images, {args.threads} thread(s)")
    print(f"  batch 50, NCHW           {t_large:.3f} s/image")
    print(f"  batch 8, channels-last   {t_small:.3f} s/image  (the pipeline)")
    print(f"  speed-up                 {t_large / t_small:.2f}x")
    print(f"  max |feature difference| {np.abs(f_large - f_small).max():.2e} "
          f"(features up to {np.abs(f_large).max():.1f})")


if __name__ == "__main__":
    main()
