#!/usr/bin/env python
"""generate_lora: adapters without training on private data (the registry's "generate" methods).

dpdeepsets (the hypernetwork) and nearest_public_lora map released noisy embeddings to PEFT
adapters (post-processing: they read only release JSONs and public artifacts); a public-only
method (mean_public_lora) maps the public LoRA bank alone. One --out per --release (a
method's epsilon grid in one process), or one --out and no --release for a public method.
"""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import setup_logging


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", required=True, help="a registered method whose producer is generate")
    p.add_argument("--release", nargs="*", default=[], help="release .json files, one per --out")
    p.add_argument("--bank", help="public LoRA bank .safetensors")
    p.add_argument("--embeddings", help="public embeddings .npy (nearest_public_lora)")
    p.add_argument("--subsets", help="public subsets .npz (nearest_public_lora)")
    p.add_argument("--hypernet", help="hypernetwork checkpoint .pt (dpdeepsets)")
    p.add_argument("--out", nargs="+", required=True, help="output PEFT adapter directories")
    args = p.parse_args()
    log = setup_logging("generate_lora")
    import numpy as np

    from dpdeepsets import generators, lora, methods
    from dpdeepsets.io import read_json

    method = methods.get(args.method)
    if method.producer != "generate" or method.name not in generators.GENERATORS:
        raise ValueError(f"{method.name} is not made by generate_lora (producer {method.producer})")
    releases = [read_json(r) for r in args.release]
    if method.privacy == "dp_release" and len(releases) != len(args.out):
        raise ValueError(f"{len(releases)} --release and {len(args.out)} --out: one of each per cell")
    if method.privacy == "public_only" and (releases or len(args.out) != 1):
        raise ValueError(f"{method.name} is public only: no --release and one --out")
    bank, basis, _, meta = lora.load_lora_bank(args.bank)
    public = generators.PublicSide(targets=lora.targets_from_bank(basis, bank), basis=basis,
                                   rank=int(meta["rank"]), alpha=float(meta["alpha"]), bank=bank)
    if method.needs_hypernet:
        from dpdeepsets import hypernet

        public.hypernet, targets, _, _ = hypernet.load_hypernet(args.hypernet)
        if [t.name for t in targets] != [t.name for t in public.targets]:
            raise ValueError(f"{args.hypernet} and {args.bank} have different LoRA targets")
    if method.needs_subset_means:
        clips = {r["ledger"]["clip_norm"] for r in releases}
        if len(clips) != 1:
            raise ValueError(f"{method.name} needs releases of one clip norm, got {sorted(clips)}")
        public.subset_means = generators.subset_means(np.load(args.embeddings),
                                                      np.load(args.subsets)["members"], clips.pop())
    generate = generators.GENERATORS[method.name]
    for release, out in zip(releases or [None], args.out):
        b, info = generate(release, public)
        meta_out = {"method": method.name, **info}
        if release is not None:
            led = release["ledger"]
            meta_out.update({k: led[k] for k in ("pset", "epsilon", "delta", "sigma", "adjacency")})
        lora.save_peft_adapter(out, public.targets, public.basis, b, rank=public.rank,
                               alpha=public.alpha, extra_meta=meta_out)
        log.info("wrote %s adapter %s %s", method.name, out, info or "")


if __name__ == "__main__":
    cli.run(main)
