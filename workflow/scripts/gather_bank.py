#!/usr/bin/env python
"""gather_bank: concatenate the fit_bank_shard shards into one public LoRA bank."""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import setup_logging


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shards", nargs="+", required=True, help="shard .safetensors files, in order")
    p.add_argument("--out", required=True, help="gathered bank .safetensors")
    args = p.parse_args()
    log = setup_logging("gather_bank")
    import numpy as np
    import torch

    from dpdeepsets import lora

    banks = [lora.load_lora_bank(s) for s in args.shards]
    basis, meta = banks[0][1], banks[0][3]
    for path, (_, other, _, m) in zip(args.shards, banks):
        if m != meta or other.keys() != basis.keys() or any(
                not torch.equal(other[k], basis[k]) for k in basis):
            raise ValueError(f"{path} was fitted with a different LoRA basis or rank than {args.shards[0]}")
    b = {k: torch.cat([bank[0][k] for bank in banks]) for k in banks[0][0]}
    ids = np.concatenate([bank[2] for bank in banks])
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError("shards do not cover the public subsets 0..M-1 in order")
    lora.save_lora_bank(args.out, b, basis, ids, meta)
    log.info("gathered %d LoRAs from %d shards -> %s", len(ids), len(banks), args.out)


if __name__ == "__main__":
    cli.run(main)
