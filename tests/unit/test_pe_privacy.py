"""Calibration of Private Evolution's vote histograms (dpdeepsets.privacy.pe_histogram_sigma).

Checked against independent math: the delta(epsilon) curve of mu-GDP written out with scipy's
normal CDF (not the module's log-space evaluation), at mu = sqrt(T) Delta / sigma.
"""

import math

import numpy as np
import pytest
from scipy.stats import norm

from dpdeepsets import privacy as P

ADJ_SENS = {"add_remove": 1.0, "replace_one": math.sqrt(2.0)}


def gdp_delta_scipy(mu: float, eps: float) -> float:
    """delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su, Cor. 2.13)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2))


@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
@pytest.mark.parametrize("iterations", [1, 3, 10, 40])
@pytest.mark.parametrize("eps,delta", [(0.25, 1e-5), (1.0, 1e-5), (4.0, 1e-6), (16.0, 1e-5)])
def test_t_iterations_compose_to_exactly_the_target(eps, delta, iterations, adjacency):
    sigma = P.pe_histogram_sigma(eps, delta, iterations, adjacency)
    mu = math.sqrt(iterations) * ADJ_SENS[adjacency] / sigma
    assert gdp_delta_scipy(mu, eps) == pytest.approx(delta, rel=1e-9)
    # a 0.1% smaller sigma would violate the target: the calibration has no slack
    assert gdp_delta_scipy(mu / 0.999, eps) > delta * 1.001


@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
def test_composing_the_t_releases_with_the_ledger_gives_epsilon_back(adjacency):
    eps, delta, t = 2.0, 1e-5, 7
    sigma = P.pe_histogram_sigma(eps, delta, t, adjacency)
    one = {"sensitivity": ADJ_SENS[adjacency], "sigma": sigma, "adjacency": adjacency}
    assert P.compose_releases([one] * t, delta)["epsilon"] == pytest.approx(eps, rel=1e-9)
    whole_run = {"sensitivity": math.sqrt(t) * ADJ_SENS[adjacency], "sigma": sigma, "adjacency": adjacency,
                 "mechanism": "analytic_gaussian", "private": True}  # the run as one ledger entry
    assert P.compose_ledger([whole_run], delta)["epsilon"] == pytest.approx(eps, rel=1e-9)


def test_sigma_scales_like_sqrt_t_and_replace_one_like_sqrt_2():
    base = P.pe_histogram_sigma(1.0, 1e-5, 1, "add_remove")
    for t in (2, 4, 9, 100):
        assert P.pe_histogram_sigma(1.0, 1e-5, t, "add_remove") == pytest.approx(math.sqrt(t) * base, rel=1e-9)
        assert P.pe_histogram_sigma(1.0, 1e-5, t, "replace_one") == pytest.approx(
            math.sqrt(2.0) * P.pe_histogram_sigma(1.0, 1e-5, t, "add_remove"), rel=1e-9)


def test_it_is_the_single_gaussian_calibration_at_sensitivity_sqrt_t():
    for adjacency, sens in ADJ_SENS.items():
        assert P.PE_HISTOGRAM_SENSITIVITY[adjacency] == sens
        assert P.pe_histogram_sigma(0.5, 1e-6, 5, adjacency) == P.analytic_gaussian_sigma(
            0.5, 1e-6, math.sqrt(5) * sens)


def test_epsilon_inf_is_the_noise_free_reference():
    assert P.pe_histogram_sigma(math.inf, 1e-5, 3, "add_remove") == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(iterations=0), "iterations"),
    (dict(iterations=2.0), "iterations"),
    (dict(iterations=True), "iterations"),
    (dict(adjacency="replace"), "adjacency"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=-1.0), "epsilon"),
    (dict(delta=1.0), "delta"),
    (dict(delta=0.0), "delta"),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = dict(epsilon=1.0, delta=1e-5, iterations=3, adjacency="add_remove") | kwargs
    with pytest.raises(P.PrivacyError, match=match):
        P.pe_histogram_sigma(**args)


def test_numpy_integer_iterations_are_accepted():
    assert P.pe_histogram_sigma(1.0, 1e-5, np.int64(3), "add_remove") == P.pe_histogram_sigma(
        1.0, 1e-5, 3, "add_remove")
