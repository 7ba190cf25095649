"""k-nearest-neighbour subsets in embedding space.

Public subsets (the hypernetwork's training sets) and the evaluation's private sets are
both k-NN sets around seeded anchors, as in the paper: a set of k examples that are close
in embedding space, i.e. a coherent "dataset" (one digit style, one object class, ...).
"""

from __future__ import annotations

import numpy as np


class SubsetError(ValueError):
    """Impossible subset request (k larger than the pool, ...)."""


def knn_subsets(embeddings: np.ndarray, *, num_sets: int, k: int, seed: int,
                what: str = "pool") -> tuple[np.ndarray, np.ndarray]:
    """``num_sets`` sets of the ``k`` nearest rows (Euclidean) around distinct seeded anchors.

    Returns ``(anchors [num_sets], members [num_sets, k])``; each set contains its anchor
    and ``members[i]`` is sorted by distance to the anchor.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if k < 2:
        raise SubsetError(f"subsets.set_size={k}: a set needs at least 2 examples")
    if k > n:
        raise SubsetError(f"subsets.set_size={k} is larger than the {what} ({n} examples)")
    if num_sets < 1 or num_sets > n:
        raise SubsetError(f"cannot draw {num_sets} distinct anchors from the {what} ({n} examples)")
    rng = np.random.default_rng(seed)
    anchors = rng.choice(n, size=num_sets, replace=False)
    sq = (x ** 2).sum(1)
    d2 = sq[anchors, None] + sq[None, :] - 2.0 * x[anchors] @ x.T  # [num_sets, n]
    d2[np.arange(num_sets), anchors] = -np.inf  # the anchor itself comes first
    members = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return anchors.astype(np.int64), members.astype(np.int64)
