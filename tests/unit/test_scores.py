"""Tests for dpdeepsets.scores: FID/KID/PRDC from features, equal to clean-fid's and prdc's own.

clean-fid and prdc are imported only here, as references; the module itself must not need
them (nor torch), which the first test checks in a fresh interpreter.
"""

import contextlib
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dpdeepsets.scores import (
    fid_from_features,
    frechet_distance,
    kid_from_features,
    precision_recall,
)


def _features(n, d, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(100 + d).standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) * scale) @ mix + shift


def test_import_and_use_without_torch_or_cleanfid():
    code = (
        "import sys, numpy as np\n"
        "from dpdeepsets.scores import fid_from_features, kid_from_features, precision_recall\n"
        "f = np.random.default_rng(0).standard_normal((12, 8))\n"
        "fid_from_features(f[:6], f[6:]); kid_from_features(f[:6], f[6:]); precision_recall(f[:6], f[6:], k=2)\n"
        "bad = [m for m in ('torch', 'cleanfid', 'prdc', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- FID

def _cleanfid_fid(f1, f2):
    import cleanfid.fid

    with warnings.catch_warnings():  # scipy: deprecated sqrtm(disp=), singular matrix
        warnings.simplefilter("ignore")
        return float(np.real(cleanfid.fid.fid_from_feats(f1, f2)))


@pytest.mark.parametrize("n1,n2,d", [(40, 50, 16), (60, 30, 24), (300, 200, 64)])
def test_frechet_distance_equals_cleanfid(n1, n2, d):
    """N1 + N2 >= D: no subspace reduction, the arithmetic itself is compared."""
    f1, f2 = _features(n1, d, 1, shift=0.3), _features(n2, d, 2, scale=1.5)
    ref = _cleanfid_fid(f1, f2)
    assert fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-9)
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 256), (12, 7, 64), (3, 2, 128)])
def test_fid_subspace_reduction_equals_cleanfid(n1, n2, d):
    """N1 + N2 < D: the isometry onto the features' span must not change clean-fid's number
    (beyond the rounding of a D-dim sqrtm of a rank-deficient product)."""
    f1, f2 = _features(n1, d, 3, shift=0.3), _features(n2, d, 4, scale=1.5)
    got = fid_from_features(f1, f2)
    assert got == pytest.approx(_cleanfid_fid(f1, f2), rel=1e-6, abs=1e-8)
    assert got > 0


def test_fid_self_zero_and_symmetric():
    f1, f2 = _features(30, 16, 5), _features(25, 16, 6, shift=1.0)
    assert abs(fid_from_features(f1, f1)) < 1e-8
    assert fid_from_features(f2, f1) == pytest.approx(fid_from_features(f1, f2), rel=1e-9)


# ----------------------------------------------------------------------------- KID

@pytest.mark.parametrize("n1,n2,d,subsets,size", [(16, 10, 2048, 100, 1000), (50, 70, 32, 20, 25),
                                                  (40, 40, 8, 5, 1000)])
@pytest.mark.parametrize("seed", [0, 7])
def test_kid_equals_cleanfid_seeded(n1, n2, d, subsets, size, seed):
    """Same seed, same subsets, same arithmetic: bit-for-bit clean-fid's kernel_distance."""
    import cleanfid.fid

    f1, f2 = _features(n1, d, 7), _features(n2, d, 8, shift=0.2)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        ref = cleanfid.fid.kernel_distance(f1, f2, num_subsets=subsets, max_subset_size=size)
    finally:
        np.random.set_state(state)
    assert kid_from_features(f1, f2, num_subsets=subsets, max_subset_size=size, seed=seed) == ref


def test_kid_leaves_global_rng_alone_and_seed_matters():
    f1, f2 = _features(30, 8, 9), _features(12, 8, 10, shift=0.5)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    k1 = kid_from_features(f1, f2)
    assert kid_from_features(f1, f2) == k1
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert kid_from_features(f1, f2, seed=1) != k1  # unequal sizes: random subsets


# ----------------------------------------------------------------------------- PRDC

@pytest.mark.parametrize("n,m,d,k", [(60, 50, 16, 5), (40, 80, 64, 3), (30, 30, 2048, 1)])
def test_prdc_equals_prdc_package(n, m, d, k):
    from prdc import compute_prdc

    real, fake = _features(n, d, 11), _features(m, d, 12, scale=1.2, shift=0.1)
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        ref = compute_prdc(real, fake, nearest_k=k)
    got = precision_recall(real, fake, k=k)
    assert set(got) == {"precision", "recall", "density", "coverage"}
    for key in got:
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(float(ref[key]), rel=1e-12), key


def test_prdc_identical_sets_and_far_sets():
    real = _features(50, 8, 13)
    same = precision_recall(real, real, k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall(real, real + 100.0, k=5)
    assert far == dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0)


# ----------------------------------------------------------------------------- bad input

def test_bad_features_raise():
    a = _features(10, 16, 14)
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(a, a[:, :8])
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(a, a[:1])
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(a, np.full_like(a, np.nan))
    with pytest.raises(ValueError, match="2-d"):
        kid_from_features(a, a[0])
    with pytest.raises(ValueError, match="numeric"):
        fid_from_features(a, [["x"] * 16] * 3)
    with pytest.raises(ValueError, match="num_subsets"):
        kid_from_features(a, a, num_subsets=0)
    with pytest.raises(ValueError, match="more than k=5"):
        precision_recall(a, a[:5], k=5)
    with pytest.raises(ValueError, match="positive integer"):
        precision_recall(a, a, k=0)
    with pytest.raises(ValueError, match="real has D=16"):
        precision_recall(a, a[:, :8])
