import numpy as np
import pytest

from dpdeepsets.subsets import SubsetError, disjoint_knn_subsets, knn_subsets, overlap_counts


def _brute_force(x, anchors, k):
    """The obviously-right reference: full float64 distances, stable argsort."""
    d2 = ((x[anchors, None, :] - x[None, :, :]) ** 2).sum(-1)
    d2[np.arange(len(anchors)), anchors] = -np.inf
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def test_knn_sets_are_nearest_neighbours():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    anchors, members = knn_subsets(x, num_sets=7, k=15, seed=3)
    assert members.shape == (7, 15) and len(set(anchors)) == 7
    for a, m in zip(anchors, members):
        assert m[0] == a and len(set(m)) == 15
        d = np.linalg.norm(x - x[a], axis=1)
        assert np.max(d[m]) <= np.min(np.delete(d, m)) + 1e-5  # nobody outside is closer (float32)


def test_chunked_knn_equals_the_full_distance_matrix():
    """Tiny chunk budgets (one anchor row, a few pool rows at a time) change nothing."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    a_full, m_full = knn_subsets(x, num_sets=11, k=9, seed=2)
    a_tiny, m_tiny = knn_subsets(x, num_sets=11, k=9, seed=2, chunk_bytes=4 * 300)
    assert np.array_equal(a_full, a_tiny) and np.array_equal(m_full, m_tiny)
    assert np.array_equal(m_full, _brute_force(x.astype(np.float64), a_full, 9))


def test_knn_reads_a_memory_mapped_pool(tmp_path):
    x = np.random.default_rng(1).normal(size=(400, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", x)
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    assert np.array_equal(knn_subsets(z, num_sets=5, k=7, seed=0, chunk_bytes=4096)[1],
                          knn_subsets(x, num_sets=5, k=7, seed=0)[1])


def test_seeded_and_clusters_recovered():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 3)) * 20
    x = np.concatenate([c + rng.normal(size=(30, 3)) for c in centres])
    a1, m1 = knn_subsets(x, num_sets=4, k=30, seed=9)
    a2, m2 = knn_subsets(x, num_sets=4, k=30, seed=9)
    assert np.array_equal(m1, m2)
    for m in m1:  # a 30-NN set of a well-separated cluster is that cluster
        assert len(set(m // 30)) == 1


def test_disjoint_sets_share_no_row():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 8))
    anchors, members = disjoint_knn_subsets(x, num_sets=8, k=60, seed=4)
    assert members.shape == (8, 60)
    assert len(np.unique(members)) == 8 * 60  # no row in two sets
    assert overlap_counts(members).max() == 1
    assert np.array_equal(members[:, 0], anchors)
    # the plain k-NN sets around the same anchors DO overlap here: the construction matters
    _, plain = knn_subsets(x, num_sets=8, k=60, seed=4)
    assert np.array_equal(plain[:, 0], anchors) and overlap_counts(plain).max() > 1


def test_disjoint_sets_are_knn_sets_where_uncontested():
    """Well-separated clusters: nothing is contested, so each disjoint set is the plain k-NN set."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 3)) * 30
    x = np.concatenate([c + rng.normal(size=(40, 3)) for c in centres])
    _, plain = knn_subsets(x, num_sets=3, k=40, seed=1)
    _, disj = disjoint_knn_subsets(x, num_sets=3, k=40, seed=1)
    if len({tuple(sorted(set(m // 40))) for m in plain}) == 3:  # three different clusters
        for p, d in zip(plain, disj):
            assert set(p) == set(d)
    # each member is taken in non-decreasing distance to its anchor
    for m in disj:
        d = np.linalg.norm(x[m] - x[m[0]], axis=1)
        assert np.all(np.diff(d) >= -1e-5)


def test_disjoint_sets_take_turns_fairly(monkeypatch):
    """Two anchors on the same cluster: contested rows are shared out in turns (the first to
    choose rotating), so neither set takes the whole neighbourhood first."""
    import dpdeepsets.subsets as S

    x = np.concatenate([[0.0, 0.001], np.linspace(0.01, 1.0, 98)])[:, None]
    monkeypatch.setattr(S, "_anchors", lambda n, num, seed: np.array([0, 1]))
    _, members = disjoint_knn_subsets(x, num_sets=2, k=10, seed=0)
    assert set(members[0]) | set(members[1]) == set(range(20))  # the 20 rows nearest both
    assert sorted(members[0][1:]) != list(range(2, 11))  # not "set 0 first, set 1 the rest"
    spread = [float(np.abs(x[m] - x[m[0]]).max()) for m in members]
    assert abs(spread[0] - spread[1]) < 0.02


def test_refusals():
    x = np.zeros((10, 2))
    with pytest.raises(SubsetError, match="larger than the public pool"):
        knn_subsets(x, num_sets=2, k=11, seed=0, what="public pool")
    with pytest.raises(SubsetError, match="at least 2"):
        knn_subsets(x, num_sets=2, k=1, seed=0)
    with pytest.raises(SubsetError, match="3 disjoint sets of 4 need 12 examples but the private pool has 10"):
        disjoint_knn_subsets(x, num_sets=3, k=4, seed=0, what="private pool")
