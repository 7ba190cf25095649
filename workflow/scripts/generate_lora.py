#!/usr/bin/env python
"""generate_lora: the hypernetwork turns a released noisy embedding into a PEFT LoRA adapter.

Post-processing of the DP release: reads only the release JSON and public artifacts.
"""

import argparse

from dpdeepsets import cli
from dpdeepsets.io import read_json, setup_logging


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--release", required=True, help="release .json from release_embedding")
    p.add_argument("--hypernet", required=True, help="hypernetwork checkpoint .pt")
    p.add_argument("--out", required=True, help="output PEFT adapter directory")
    args = p.parse_args()
    log = setup_logging("generate_lora")
    import torch

    from dpdeepsets import hypernet, lora

    release = read_json(args.release)
    net, targets, basis, meta = hypernet.load_hypernet(args.hypernet)
    z = torch.tensor([release["noisy_embedding"]], dtype=torch.float32)
    sigma = torch.tensor([float(release["ledger"]["sigma"])])
    if z.shape[1] != net.emb_dim:
        raise ValueError(f"{args.release}: embedding has {z.shape[1]} dims, hypernetwork expects {net.emb_dim}")
    with torch.no_grad():
        b = {k: v[0] for k, v in net(z, sigma).items()}
    ledger = release["ledger"]
    lora.save_peft_adapter(args.out, targets, basis, b, rank=net.rank, alpha=float(meta["alpha"]),
                           extra_meta={"method": "dpdeepsets", "pset": ledger["pset"],
                                       "epsilon": ledger["epsilon"], "delta": ledger["delta"],
                                       "sigma": ledger["sigma"]})
    log.info("wrote adapter %s (%d modules)", args.out, len(targets))


if __name__ == "__main__":
    cli.run(main)
