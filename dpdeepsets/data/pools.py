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


def validation_pool_size(n_public_all: int, n_private: int, cfg) -> int:
    """Images held out of the public part as the public validation pool (``data.validation_size``:
    ``"private"`` = the private pool's size, an integer, or null = ``validation_fraction``
    of the public part, rounded as :func:`split_public_private` rounds). The rest must stay
    non-empty."""
    size = cfg.get("validation_size", "private")
    if size == "private":
        n_val, why = int(n_private), f"data.validation_size=private ({n_private}, the private pool)"
    elif size is None:
        n_val = n_public_all - int(round(n_public_all * (1 - float(cfg["validation_fraction"]))))
        why = f"data.validation_fraction={cfg['validation_fraction']}"
    else:
        n_val, why = int(size), f"data.validation_size={size}"
    if not 0 < n_val < n_public_all:
        raise DataError(f"{why} leaves no public pool: the public part has {n_public_all} images")
    return n_val
