"""Public seeds: reproducible randomness that protects nothing.

Anchors of the k-NN sets, minibatch order, the diffusion (timestep, noise) draws of a
training loss, the sampler's starting noise: none of these hides anything, so they are
derived from config seeds in the clear, and a run is reproducible from its config. The
randomness that protects privacy (release noise, DP-SGD noise and Poisson batches) never
comes from here: it comes from :mod:`dpdeepsets.noise` (a secret key or OS entropy).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from a base seed and stream labels (ints or strings).

    ``derive_seed(cfg_seed, "lora", subset_id)``: distinct labels give independent
    streams (SHA-256 of their canonical spelling), unlike ``seed * K + i`` arithmetic,
    whose streams collide when a base seed and an offset trade places.
    """
    text = "\x1f".join(repr(p) if not isinstance(p, str) else p for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
