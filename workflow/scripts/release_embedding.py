#!/usr/bin/env python
"""release_embedding: THE DP STEP. Clip, average and noise one private set's embeddings.

This is the only stage whose output depends on private data and is released. It reads the
private embeddings and the private set's member list, calls
dpdeepsets.privacy.release_clipped_mean (analytic Gaussian mechanism), and writes the noisy
d-dimensional mean together with its privacy-ledger entry.
"""

from dpdeepsets import cli
from dpdeepsets.io import format_epsilon, parse_epsilon, setup_logging, write_json

SECTIONS = ["privacy"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="private embeddings .npy")
    p.add_argument("--sets", required=True, help="private sets .npz")
    p.add_argument("--key", required=True, help="the secret noise key file (privacy.noise=keyed)")
    p.add_argument("--n", type=int, required=True,
                   help="the public set size n (subsets.set_size): the release divides by it")
    p.add_argument("--pset", required=True, help="private set id, e.g. p0")
    p.add_argument("--epsilon", required=True, help="epsilon, or 'inf' for the non-private reference")
    p.add_argument("--seed", type=int, required=True, help="experiment seed")
    p.add_argument("--out", required=True, help="release .json")
    args = p.parse_args()
    priv = cli.read_settings(args, SECTIONS)["privacy"]
    log = setup_logging("release_embedding")
    import numpy as np

    from dpdeepsets import noise, privacy
    from dpdeepsets.data import load_embeddings

    index = int(args.pset.lstrip("p"))
    members = np.load(args.sets)["members"]
    if not 0 <= index < len(members):
        raise ValueError(f"private set {args.pset} does not exist ({len(members)} sets)")
    x = load_embeddings(args.embeddings)[members[index]]  # refuses NaN/Inf, names the file
    eps = parse_epsilon(args.epsilon)
    cell = f"{args.pset}/{format_epsilon(eps)}/{args.seed}"
    source = noise.noise_source(priv["noise"], args.key, noise.cell_identity(
        mechanism="release_embedding", pset=args.pset, epsilon=eps, seed=args.seed))
    noisy, ledger = privacy.release_clipped_mean(
        x, epsilon=eps, delta=priv["delta"], clip_norm=priv["clip_norm"],
        adjacency=priv["adjacency"], n=args.n, noise=source)
    ledger.update({"pset": args.pset, "seed": args.seed, "method": "dpdeepsets"})
    write_json(args.out, {"ledger": ledger, "noisy_embedding": noisy.tolist()})
    log.info("released %s: n=%d d=%d epsilon=%s delta=%g sigma=%.6g (%s noise)", cell,
             ledger["n"], ledger["dim"], args.epsilon, ledger["delta"], ledger["sigma"],
             ledger["noise_source"])


if __name__ == "__main__":
    cli.run(main)
