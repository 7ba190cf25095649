"""FID, KID and precision/recall/density/coverage from feature arrays, with numpy and scipy only.

Scoring is split from feature extraction (:mod:`dpdeepsets.metrics`) so that a job that
only scores saved features starts without importing torch or clean-fid.  The arithmetic is
clean-fid's (``cleanfid.fid.frechet_distance`` and ``kernel_distance``, 0.1.35) and prdc's
(``prdc.compute_prdc``, 0.2, Naeem et al. 2020), re-implemented here line for line;
``tests/unit/test_scores.py`` requires equality with those packages' own functions.

* FID: sample mean and covariance (float64, ``np.cov`` ddof 1), then clean-fid's Fréchet
  distance.  When ``N1 + N2 < D`` both sets are first mapped isometrically onto the
  (N1 + N2)-dim subspace that holds them: FID is invariant under that map, and ``sqrtm``
  then runs on a small matrix instead of a D x D one.
* KID: clean-fid's unbiased cubic-kernel MMD over random subsets of size
  ``min(N1, N2, max_subset_size)``.  clean-fid draws the subsets with ``np.random.choice``
  from numpy's global RandomState; here a private ``RandomState(seed)`` makes the same draws
  (so ``np.random.seed(seed)`` before clean-fid gives the same number), leaving the global
  RNG alone.
* PRDC: k-nearest-neighbour balls (the distance to the k-th nearest other point of the
  same set) around real and fake features; precision/density ask how many fake points fall
  in real balls, recall how many real points fall in fake balls, coverage how many real
  balls hold a fake point.  Distances are Euclidean (as prdc's sklearn call).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = [
    "fid_from_features",
    "frechet_distance",
    "kernel_distance",
    "kid_from_features",
    "precision_recall",
]


def _check_features(f, name: str) -> np.ndarray:
    try:
        f = np.asarray(f, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array [N, D]: {exc}") from None
    if f.ndim != 2:
        raise ValueError(f"{name} must be 2-d [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (a covariance / KID needs N >= 2), got N={f.shape[0]}")
    if f.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimensions (shape {f.shape})")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f


def _check_pair(f1, f2, names=("f1", "f2")):
    f1 = _check_features(f1, names[0])
    f2 = _check_features(f2, names[1])
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {names[0]} has D={f1.shape[1]}, "
                         f"{names[1]} has D={f2.shape[1]}")
    return f1, f2


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """clean-fid's ``frechet_distance``: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    Same steps as clean-fid 0.1.35: ``scipy.linalg.sqrtm`` of ``S1 @ S2``; if that is not
    finite, ``eps`` is added to both diagonals and it is retried; a small imaginary part
    (rounding) is dropped, a large one (|imag| > 1e-3 on the diagonal) raises.  scipy's
    "singular matrix" warning is silenced: with N <= D the covariances are rank-deficient
    by construction.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mean/covariance shapes differ: {mu1.shape} vs {mu2.shape}, "
                         f"{sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals",
                          RuntimeWarning, stacklevel=2)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: matrix square root has an imaginary component "
                             f"{np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(f1, f2) -> float:
    """Fréchet Inception Distance between two feature sets [N1, D], [N2, D] (N >= 2 each).

    Equals clean-fid's ``fid_from_feats`` (mean, ``np.cov``, ``frechet_distance``).  If
    ``N1 + N2 < D`` both sets are first expressed in an orthonormal basis of the subspace
    spanned by the (commonly shifted) features; the distance is invariant under this
    isometry, so the result equals the D-dim computation up to rounding while ``sqrtm``
    runs on a (N1+N2)-dim matrix.
    """
    f1, f2 = _check_pair(f1, f2)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 + n2 < d:
        shift = f2.mean(axis=0)  # FID is translation invariant
        g1, g2 = f1 - shift, f2 - shift
        basis, _ = np.linalg.qr(np.concatenate([g1, g2]).T)  # [d, n1+n2], orthonormal columns
        f1, f2 = g1 @ basis, g2 @ basis
    return frechet_distance(f1.mean(axis=0), np.cov(f1, rowvar=False),
                            f2.mean(axis=0), np.cov(f2, rowvar=False))


def kernel_distance(feats1, feats2, num_subsets: int = 100, max_subset_size: int = 1000,
                    *, rng: np.random.RandomState) -> float:
    """clean-fid's ``kernel_distance`` with its subsets drawn from ``rng`` (a RandomState).

    Per subset, ``m`` rows of ``feats2`` then ``m`` rows of ``feats1`` without replacement
    (clean-fid's order), the unbiased MMD^2 estimate with kernel ``(x.y / d + 1)^3``;
    the mean over subsets.  No input checks: see :func:`kid_from_features`.
    """
    n = feats1.shape[1]
    m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
    t = 0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def kid_from_features(f1, f2, *, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """Kernel Inception Distance (clean-fid ``kernel_distance``) between [N1, D] and [N2, D].

    The subset size is ``min(N1, N2, max_subset_size)`` (clean-fid clamps it), so N as small
    as 2 works.  Subsets come from ``np.random.RandomState(seed)``: the same draws as
    clean-fid after ``np.random.seed(seed)``, without touching numpy's global RNG.
    """
    f1, f2 = _check_pair(f1, f2)
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and max_subset_size >= 2, got {num_subsets}, {max_subset_size}")
    return kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size,
                           rng=np.random.RandomState(seed))


def _pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(x), len(y)] by ``|x|^2 + |y|^2 - 2 x.y`` (as sklearn)."""
    d2 = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None, :] - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    d = _pairwise_distances(x, x)
    np.fill_diagonal(d, 0.0)  # a point is its own 0-th neighbour, whatever the rounding
    return np.partition(d, k, axis=1)[:, k]


def precision_recall(real, fake, k: int = 5) -> dict:
    """Precision, recall, density and coverage of ``fake`` [M, D] against ``real`` [N, D].

    Naeem et al. (2020), "Reliable Fidelity and Diversity Metrics for Generative Models",
    as computed by the ``prdc`` package: with ``r_i`` the distance from real point i to its
    k-th nearest real neighbour (``s_j`` likewise for fake points),

    * precision = fraction of fake j with ``d(x_i, y_j) < r_i`` for some i;
    * recall    = fraction of real i with ``d(x_i, y_j) < s_j`` for some j;
    * density   = (1/k) * mean over fake j of the number of real balls holding j
      (can exceed 1);
    * coverage  = fraction of real i whose nearest fake point lies inside its ball.

    Needs more than ``k`` points in each set.  Returns ``dict(precision, recall, density,
    coverage)`` of floats.
    """
    real, fake = _check_pair(real, fake, names=("real", "fake"))
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    for name, f in (("real", real), ("fake", fake)):
        if f.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} rows for k-nearest-neighbour balls, got N={f.shape[0]}")
    real_radii = _kth_neighbour_radii(real, k)
    fake_radii = _kth_neighbour_radii(fake, k)
    d = _pairwise_distances(real, fake)  # [N, M]
    in_real_ball = d < real_radii[:, None]
    return dict(
        precision=float(in_real_ball.any(axis=0).mean()),
        recall=float((d < fake_radii[None, :]).any(axis=1).mean()),
        density=float((1.0 / k) * in_real_ball.sum(axis=0).mean()),
        coverage=float((d.min(axis=1) < real_radii).mean()),
    )
