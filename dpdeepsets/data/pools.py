"""Pools: the seeded, data-independent split of one source into public and private parts."""

from __future__ import annotations

import numpy as np

from .store import DataError


def split_public_private(n: int, public_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into disjoint public/private index
    sets (each returned sorted, int64).  ``round(n * public_fraction)`` go to
    public; both parts must be non-empty."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise DataError(f"split_public_private: need an integer n >= 2, got {n!r}")
    n = int(n)
    f = float(public_fraction)
    if not (0.0 < f < 1.0):
        raise DataError(f"split_public_private: public_fraction must be in (0,1), got {public_fraction!r}")
    n_pub = int(round(n * f))
    if n_pub == 0 or n_pub == n:
        raise DataError(
            f"split_public_private: n={n}, public_fraction={f} leaves an empty "
            f"{'public' if n_pub == 0 else 'private'} part"
        )
    perm = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(perm[:n_pub]).astype(np.int64), np.sort(perm[n_pub:]).astype(np.int64)
