#!/usr/bin/env python
"""release_embedding: THE DP STEP. Clip, average and noise one private set's embeddings.

This is the only stage whose output depends on private data and is released. It reads the
private embeddings, the private set's member list and the secret noise key, calls
dpdeepsets.privacy.release_clipped_mean (analytic Gaussian mechanism; the clipped sum is
divided by the public set size n) once per epsilon, and writes each noisy d-dimensional
mean with its privacy-ledger entry. Every epsilon is an independent release with its own
key-derived noise. The ledger holds no seed: without the key the noise cannot be recomputed.
"""

from dpdeepsets import cli
from dpdeepsets.io import setup_logging, write_json

SECTIONS = ["privacy"]


def main():
    p = cli.make_parser(__doc__, SECTIONS)
    p.add_argument("--embeddings", required=True, help="private embeddings .npy")
    p.add_argument("--sets", required=True, help="private sets .npz")
    p.add_argument("--key", help="the secret noise key file (privacy.noise=keyed)")
    p.add_argument("--n", type=int, required=True,
                   help="the public set size n (subsets.set_size): the release divides by it")
    p.add_argument("--pset", required=True, help="private set id, e.g. p0")
    p.add_argument("--epsilon", nargs="+", required=True,
                   help="epsilon(s), or 'inf' for the non-private reference; one release each")
    p.add_argument("--seed", type=int, required=True, help="experiment replicate (not a noise seed)")
    p.add_argument("--out", nargs="+", required=True, help="release .json, one per --epsilon")
    args = p.parse_args()
    if len(args.epsilon) != len(args.out):
        raise ValueError(f"{len(args.epsilon)} --epsilon and {len(args.out)} --out: one of each per release")
    priv = cli.read_settings(args, SECTIONS)["privacy"]
    log = setup_logging("release_embedding")
    from dpdeepsets import noise, privacy
    from dpdeepsets.data import load_embeddings, private_set_rows
    from dpdeepsets.io import format_epsilon, parse_epsilon

    x = load_embeddings(args.embeddings)[private_set_rows(args.sets, args.pset)]
    for text, out in zip(args.epsilon, args.out):
        eps = parse_epsilon(text)
        source = noise.noise_source(priv["noise"], args.key, noise.cell_identity(
            mechanism="release_embedding", pset=args.pset, epsilon=eps, seed=args.seed))
        noisy, ledger = privacy.release_clipped_mean(
            x, epsilon=eps, delta=priv["delta"], clip_norm=priv["clip_norm"],
            adjacency=priv["adjacency"], n=args.n, noise=source)
        ledger.update({"pset": args.pset, "replicate": args.seed, "method": "dpdeepsets"})
        write_json(out, {"ledger": ledger, "noisy_embedding": noisy.tolist()})
        log.info("released %s eps=%s: d=%d delta=%g sigma=%.6g (%s noise, %s)", args.pset,
                 format_epsilon(eps), ledger["dim"], ledger["delta"], ledger["sigma"],
                 ledger["noise_source"], ledger["adjacency"])


if __name__ == "__main__":
    cli.run(main)
