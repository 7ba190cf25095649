"""k-nearest-neighbour subsets in embedding space.

Public subsets (the hypernetwork's training sets) and the evaluation's private sets are
both k-NN sets around seeded anchors, as in the paper: a set of k examples that are close
in embedding space, i.e. a coherent "dataset" (one digit style, one object class, ...).

Two constructions:

:func:`knn_subsets`            every set is the k nearest rows of its anchor; sets may share
                               rows (the public bank: many subsets of one pool).
:func:`disjoint_knn_subsets`   the private sets and the public proxy sets that stand in for
                               them: the anchors take their nearest rows in turns, so no row
                               is in two sets. Disjoint sets are independent units for the
                               statistics over sets, and a person is in at most one set, so
                               the privacy budget per person equals the budget per set.

Both work in float32 on chunks of anchors, so memory is bounded independently of the pool
size N (the paper's public pool has 1.28 M rows: a full [4096, N] float64 distance matrix
would be 42 GB).
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 256 << 20  # distance rows held at once (float32)


class SubsetError(ValueError):
    """Impossible subset request (k larger than the pool, ...)."""


def _check(n: int, num_sets: int, k: int, what: str, disjoint: bool) -> None:
    if k < 2:
        raise SubsetError(f"subsets.set_size={k}: a set needs at least 2 examples")
    if k > n:
        raise SubsetError(f"subsets.set_size={k} is larger than the {what} ({n} examples)")
    if num_sets < 1 or num_sets > n:
        raise SubsetError(f"cannot draw {num_sets} distinct anchors from the {what} ({n} examples)")
    if disjoint and num_sets * k > n:
        raise SubsetError(f"{num_sets} disjoint sets of {k} need {num_sets * k} examples but the "
                          f"{what} has {n}")


def _sq_norms(x, chunk_rows: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for i in range(0, x.shape[0], chunk_rows):
        c = np.asarray(x[i:i + chunk_rows], dtype=np.float32)
        out[i:i + len(c)] = np.einsum("ij,ij->i", c, c)
    return out


def _distances(x, sq: np.ndarray, anchors: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Squared distances [len(anchors), N] (float32), the pool read in row chunks."""
    a = np.asarray(x[np.sort(anchors)], dtype=np.float32)[np.argsort(np.argsort(anchors))]
    sa = np.einsum("ij,ij->i", a, a)
    d2 = np.empty((len(anchors), x.shape[0]), dtype=np.float32)
    for i in range(0, x.shape[0], chunk_rows):
        c = np.asarray(x[i:i + chunk_rows], dtype=np.float32)
        d2[:, i:i + len(c)] = sa[:, None] + sq[None, i:i + len(c)] - 2.0 * (a @ c.T)
    d2[np.arange(len(anchors)), anchors] = -np.inf  # the anchor itself comes first
    return d2


def _anchors(n: int, num_sets: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=num_sets, replace=False).astype(np.int64)


def knn_subsets(embeddings: np.ndarray, *, num_sets: int, k: int, seed: int,
                what: str = "pool", chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """``num_sets`` sets of the ``k`` nearest rows (Euclidean) around distinct seeded anchors.

    Returns ``(anchors [num_sets], members [num_sets, k])``; each set contains its anchor
    and ``members[i]`` is sorted by distance to the anchor. Sets may overlap. ``embeddings``
    may be memory-mapped: it is read in chunks, and at most ``chunk_bytes`` of distances
    are held at once (plus the [num_sets, k] result).
    """
    n = embeddings.shape[0]
    _check(n, num_sets, k, what, disjoint=False)
    anchors = _anchors(n, num_sets, seed)
    per_anchor = max(1, chunk_bytes // (4 * n))  # anchors whose distance rows fit the budget
    chunk_rows = max(1, chunk_bytes // (4 * max(1, embeddings.shape[1]) * 4))
    sq = _sq_norms(embeddings, chunk_rows)
    members = np.empty((num_sets, k), dtype=np.int64)
    for i in range(0, num_sets, per_anchor):
        block = anchors[i:i + per_anchor]
        d2 = _distances(embeddings, sq, block, chunk_rows)
        top = np.argpartition(d2, k - 1, axis=1)[:, :k]
        dtop = np.take_along_axis(d2, top, axis=1)
        # sort the k by (distance, index): ties break like a stable argsort of the full row
        order = np.lexsort((top, dtop), axis=1)
        members[i:i + len(block)] = np.take_along_axis(top, order, axis=1)
    return anchors, members


def disjoint_knn_subsets(embeddings: np.ndarray, *, num_sets: int, k: int, seed: int,
                         what: str = "pool", chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """``num_sets`` DISJOINT k-NN sets around distinct seeded anchors.

    Each set starts with its anchor; then, for k - 1 rounds, every set in turn (the first
    to choose rotates each round, so no set is favoured) takes the nearest row to its
    anchor that no set holds yet. Without contested rows this is exactly
    :func:`knn_subsets`; where two anchors' neighbourhoods overlap, the contested rows are
    shared out in turns. Returns ``(anchors, members [num_sets, k])``; ``members[i]`` is in
    the order taken (non-decreasing distance to the anchor). Needs num_sets * k <= N.
    Memory: the [num_sets, N] float32 distance rows (num_sets is small: tens of private
    sets), the pool read in chunks.
    """
    n = embeddings.shape[0]
    _check(n, num_sets, k, what, disjoint=True)
    anchors = _anchors(n, num_sets, seed)
    chunk_rows = max(1, chunk_bytes // (4 * max(1, embeddings.shape[1]) * 4))
    sq = _sq_norms(embeddings, chunk_rows)
    d2 = _distances(embeddings, sq, anchors, chunk_rows)
    order = np.argsort(d2, axis=1, kind="stable")
    del d2
    taken = np.zeros(n, dtype=bool)
    taken[anchors] = True
    members = np.empty((num_sets, k), dtype=np.int64)
    members[:, 0] = anchors
    ptr = np.ones(num_sets, dtype=np.int64)  # position 0 is each set's own anchor
    for r in range(1, k):
        for j in range(num_sets):
            i = (r + j) % num_sets
            row = order[i]
            p = ptr[i]
            while taken[row[p]]:
                p += 1
            members[i, r] = row[p]
            taken[row[p]] = True
            ptr[i] = p + 1
    return anchors, members


def overlap_counts(members: np.ndarray) -> np.ndarray:
    """How many sets each row belongs to (``[max index + 1]``): all <= 1 for disjoint sets."""
    return np.bincount(np.asarray(members).ravel())
