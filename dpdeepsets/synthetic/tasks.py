"""The synthetic task family (hidden subspace, public and private tasks, shift) and least squares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Stream identifiers of the task generator (one independent stream per purpose). They make
# the *simulated data* reproducible; no privacy noise is ever drawn from them
# (dpdeepsets.noise owns that).
_SUBSPACE, _PUBLIC, _PRIVATE, _OUTSIDE = range(4)


def task_rng(*keys: int) -> np.random.Generator:
    """The data generator of one stream (seed, purpose, ...): simulation only, never privacy noise."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def training_seed(*keys: int) -> int:
    """A non-negative 63-bit seed for public-side training (hypernetwork), derived from ``keys``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def subspace_basis(dim: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``dim x k`` matrix with orthonormal columns."""
    if not 1 <= k <= dim:
        raise ValueError(f"synthetic.k must be in [1, D], got k={k}, D={dim}")
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.sign(np.diag(r))


def shift_vector(w_in: np.ndarray, basis: np.ndarray, degrees: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Rotate ``w_in`` (in ``span(basis)``) out of the subspace by ``degrees``.

    Returns ``cos(t) w_in + sin(t) w_out``, ``w_out`` a random direction orthogonal to the
    subspace with ``||w_out|| = ||w_in||``; the norm is preserved and the angle between the
    result and the subspace is ``t``. Requires ``k < D`` unless ``degrees == 0``.
    """
    if degrees == 0:
        return w_in.copy()
    if not 0 <= degrees <= 90:
        raise ValueError(f"synthetic.shift_degrees must be in [0, 90], got {degrees}")
    g = rng.standard_normal(len(w_in))
    g -= basis @ (basis.T @ g)
    norm = np.linalg.norm(g)
    if norm < 1e-12:
        raise ValueError("cannot shift a task out of a subspace that fills the whole space (k = D)")
    t = math.radians(degrees)
    return math.cos(t) * w_in + math.sin(t) * (np.linalg.norm(w_in) / norm) * g


def angle_to_subspace(w: np.ndarray, basis: np.ndarray) -> float:
    """Angle in degrees between ``w`` and ``span(basis)`` (orthonormal columns)."""
    c = np.linalg.norm(basis.T @ w) / np.linalg.norm(w)
    return math.degrees(math.acos(min(1.0, c)))


@dataclass
class TaskFamily:
    """The data-generating process of one dimension D. ``basis`` is hidden from learners."""

    dim: int
    k: int
    noise_std: float
    seed: int
    basis: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.basis = subspace_basis(self.dim, self.k, task_rng(self.seed, _SUBSPACE, self.dim))

    def _draw(self, rng: np.random.Generator, n: int, w: np.ndarray):
        x = rng.standard_normal((n, self.dim))
        y = x @ w + self.noise_std * rng.standard_normal(n)
        return x, y

    def coefficients(self, rng: np.random.Generator) -> np.ndarray:
        return self.basis @ (rng.standard_normal(self.k) / math.sqrt(self.k))

    def public_task(self, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Public task m: (X [n, D], y [n], true w). Deterministic in (seed, D, m)."""
        rng = task_rng(self.seed, _PUBLIC, self.dim, m)
        w = self.coefficients(rng)
        return (*self._draw(rng, n, w), w)

    def private_task(self, rep: int, n: int, shift_degrees: float = 0.0):
        """Private task of repetition ``rep``, rotated out of the subspace by ``shift_degrees``.

        Common random numbers: the subspace coefficients ``a`` depend only on (seed, rep),
        so repetition ``rep`` has the same ``||w||`` in every D; x and the label noise
        depend on (seed, D, rep); tasks of one repetition at different angles differ only
        by the rotation. (The simulated private data is reproducible from the seed; the
        privacy noise added to it is not: it comes from dpdeepsets.noise.)
        """
        w_in = self.coefficients(task_rng(self.seed, _PRIVATE, rep))
        rng = task_rng(self.seed, _PRIVATE, self.dim, rep)
        x = rng.standard_normal((n, self.dim))
        noise = self.noise_std * rng.standard_normal(n)
        w = shift_vector(w_in, self.basis, shift_degrees, task_rng(self.seed, _OUTSIDE, self.dim, rep))
        return x, x @ w + noise, w


def excess_risk(w_hat: np.ndarray, w: np.ndarray) -> float:
    """E_x[(<w_hat, x> - <w, x>)^2] = ||w_hat - w||^2 for x ~ N(0, I)."""
    return float(np.sum((np.asarray(w_hat, dtype=np.float64) - w) ** 2))


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ordinary least squares: normal equations when n >= D (x is well conditioned here;
    LAPACK's SVD-based lstsq is ~50x slower), the minimum-norm lstsq solution otherwise."""
    n, dim = x.shape
    if n >= dim:
        try:
            return np.linalg.solve(x.T @ x, x.T @ y)
        except np.linalg.LinAlgError:
            pass
    return np.linalg.lstsq(x, y, rcond=None)[0]


def subspace_least_squares(x: np.ndarray, y: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Least squares restricted to ``span(basis)``: ``basis @ lstsq(x @ basis, y)``."""
    return basis @ least_squares(x @ basis, y)
