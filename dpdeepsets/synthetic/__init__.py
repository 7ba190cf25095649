"""Synthetic linear regression: DP-DeepSets vs DP-SGD when tasks share a low-dim subspace.

Setting (docs/synthetic.md has the argument and the measured tables)
--------------------------------------------------------------------
A task is ``y = <w, x> + noise`` with ``x ~ N(0, I_D)`` and noise ``N(0, noise_std^2)``.
Task vectors are ``w = U a`` with ``a ~ N(0, I_k / k)`` (so ``E||w||^2 = 1``) and one
``D x k`` orthonormal ``U`` shared by all tasks and *never shown to the learner*
(:class:`TaskFamily` holds it; only the task generator and the oracle reference read it).
``M`` public tasks come with ``public_examples`` examples each; the private task has ``n``
(public). Because ``x`` is isotropic, the excess risk of an estimate is ``||w_hat - w||^2``.

Modules
-------
``tasks``       the task family, the shift, least squares, the excess risk.
``methods``     the private estimators, all at the same (epsilon, delta):
                ``dpdeepsets`` (public projection P, hypernetwork; ONE release of
                ``privacy.release_clipped_mean`` dividing by the public n), ``dpsgd`` (opacus
                on all D coordinates) and ``dpsgd_subspace`` (opacus on ``w = P v``, the same
                public P), both tuned on public tasks only.
``experiment``  :func:`run_experiment`, the per-cell noise sources, summaries, ratio tables.
``plots``       the two figures.

Privacy noise comes from :mod:`dpdeepsets.noise` only: a secret key and the cell identity
(purpose, method, D, epsilon, repetition, part, shift angle), or fresh OS entropy. No
seed of privacy noise is derived from public values or written anywhere; the simulated
data themselves are generated from the public ``seed``.
"""

from .experiment import (BASELINES, METHODS, REFERENCES, Results, format_tables, noise_factory,
                         ratio_intervals, ratio_table, run_experiment, summarise)
from .methods import (DPSGD_METHODS, PublicModel, dpdeepsets_fit, dpsgd_fit, dpsgd_subspace_fit,
                      embed, fit_public, fit_sgd_method, public_projection, release_sigmas,
                      tune_dpsgd)
from .plots import plot_excess_risk, plot_shift
from .tasks import (TaskFamily, angle_to_subspace, excess_risk, least_squares, shift_vector,
                    subspace_basis, subspace_least_squares)

__all__ = ["BASELINES", "METHODS", "REFERENCES", "DPSGD_METHODS", "Results", "PublicModel",
           "TaskFamily", "run_experiment", "noise_factory", "summarise", "ratio_intervals",
           "ratio_table", "format_tables", "plot_excess_risk", "plot_shift", "fit_public",
           "dpdeepsets_fit", "dpsgd_fit", "dpsgd_subspace_fit", "fit_sgd_method", "tune_dpsgd",
           "embed", "public_projection", "release_sigmas", "angle_to_subspace", "excess_risk",
           "least_squares", "shift_vector", "subspace_basis", "subspace_least_squares"]
