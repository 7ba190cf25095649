import numpy as np
import pytest

from dpdeepsets.subsets import SubsetError, knn_subsets


def test_knn_sets_are_nearest_neighbours():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    anchors, members = knn_subsets(x, num_sets=7, k=15, seed=3)
    assert members.shape == (7, 15) and len(set(anchors)) == 7
    for a, m in zip(anchors, members):
        assert m[0] == a and len(set(m)) == 15
        d = np.linalg.norm(x - x[a], axis=1)
        assert np.max(d[m]) <= np.min(np.delete(d, m)) + 1e-12  # nobody outside is closer


def test_seeded_and_clusters_recovered():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 3)) * 20
    x = np.concatenate([c + rng.normal(size=(30, 3)) for c in centres])
    a1, m1 = knn_subsets(x, num_sets=4, k=30, seed=9)
    a2, m2 = knn_subsets(x, num_sets=4, k=30, seed=9)
    assert np.array_equal(m1, m2)
    for m in m1:  # a 30-NN set of a well-separated cluster is that cluster
        assert len(set(m // 30)) == 1


def test_refusals():
    x = np.zeros((10, 2))
    with pytest.raises(SubsetError, match="larger than the public pool"):
        knn_subsets(x, num_sets=2, k=11, seed=0, what="public pool")
    with pytest.raises(SubsetError, match="at least 2"):
        knn_subsets(x, num_sets=2, k=1, seed=0)
