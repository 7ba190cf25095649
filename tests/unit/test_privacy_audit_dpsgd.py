"""White-box audit of the DP-SGD step with Dirac canaries (dpdeepsets.privacy_audit.dpsgd).

The audit runs the pipeline's Poisson sampler, opacus' DPOptimizer with the keyed noise
source's generators, and the privacy module's noise multiplier (via baselines.plan_dp).
Fast configurations: full batches, 1-2 steps (with full batches the per-canary mechanism is
the Gaussian of mu = sqrt(T)/z whatever T is, so few steps lose no power).
"""

import math

import numpy as np
import pytest

from dpdeepsets import privacy as P
from dpdeepsets.privacy_audit import dpsgd as D
from dpdeepsets.privacy_audit import stats as S

DELTA = 1e-5


@pytest.fixture(scope="module")
def unet_workload():
    return D.tiny_lora_unet_workload()


def test_correct_dpsgd_is_not_caught_and_halved_noise_is(monkeypatch):
    kw = dict(steps=2, sample_rate=1.0, canaries=2000, runs=30)
    ok = D.audit_dpsgd(2.0, DELTA, **kw)
    assert ok["accountant"] == "gdp" and ok["epsilon_claimed"] <= 2.0 + 1e-9
    assert ok["noise_multiplier"] == pytest.approx(P.dpsgd_noise_multiplier(2.0, DELTA, 1.0, 2, "gdp"))
    assert not ok["caught"] and ok["epsilon_lower_bound"] < ok["epsilon_claimed"], ok
    bug = D.audit_dpsgd(2.0, DELTA, plan_hook=D.halve_noise_multiplier, **kw)
    assert bug["noise_multiplier_used"] == pytest.approx(bug["noise_multiplier"] / 2)
    assert bug["epsilon_claimed"] == ok["epsilon_claimed"]  # the claim does not see the bug
    assert bug["caught"] and bug["epsilon_lower_bound"] > bug["epsilon_claimed"], bug


def test_poisson_sampled_dpsgd_is_not_caught():
    r = D.audit_dpsgd(4.0, DELTA, steps=10, sample_rate=0.25, canaries=2000, runs=3)
    assert r["accountant"] == "prv" and r["sample_rate"] == pytest.approx(0.25, rel=1e-3)
    assert not r["caught"] and 0.0 <= r["epsilon_lower_bound"] <= r["epsilon_claimed"], r


def test_lora_unet_dpsgd_is_not_caught_and_adds_the_claimed_noise(unet_workload):
    """The tiny LoRA-UNet through the pipeline's step. The scores also check the mechanism:
    with full batches each step adds C (the clipped canary) to an included canary's
    coordinate, and N(0, (zC)^2) to every coordinate, so the summed, normalised scores are
    N(T/z, T) for included and N(0, T) for excluded canaries."""
    r = D.audit_dpsgd(4.0, DELTA, steps=1, sample_rate=1.0, canaries=4000, workload=unet_workload)
    assert "LoRA-UNet" in r["workload"] and r["accountant"] == "gdp"
    assert not r["caught"] and r["epsilon_lower_bound"] <= r["epsilon_claimed"], r
    z = r["noise_multiplier"]
    (m_in, s_in), (m_out, s_out) = r["score_in"], r["score_out"]
    assert m_in == pytest.approx(1 / z, abs=0.1) and abs(m_out) < 0.1
    assert s_in == pytest.approx(1.0, abs=0.06) and s_out == pytest.approx(1.0, abs=0.06)


def test_audit_of_the_real_step_matches_the_ideal_mechanism():
    """What the real step gives is what the ideal Gaussian gives (same canaries, same bound)."""
    z = P.dpsgd_noise_multiplier(4.0, DELTA, 1.0, 2, "gdp")
    real = D.audit_dpsgd(4.0, DELTA, steps=2, sample_rate=1.0, canaries=2000, runs=5)
    ideal = S.one_run_audit(*D.ideal_scores(z, 1.0, 2, 10_000), DELTA)
    assert real["epsilon_lower_bound"] == pytest.approx(ideal["epsilon_lower_bound"], abs=0.6)
    assert real["epsilon_ceiling"] == pytest.approx(ideal["epsilon_ceiling"], abs=1e-9)


def test_ideal_scores_and_canary_scores():
    s, inc = D.ideal_scores(2.0, 1.0, 4, 20_000)
    assert s[inc].mean() == pytest.approx(4 / 2.0, abs=0.06) and s[inc].std() == pytest.approx(2.0, rel=0.03)
    assert abs(s[~inc].mean()) < 0.06
    # Poisson sampling: the likelihood-ratio score has E_out[exp(score)] = 1
    s, inc = D.ideal_scores(1.0, 0.25, 3, 200_000)
    assert np.exp(s[~inc]).mean() == pytest.approx(1.0, abs=0.02)
    assert s[inc].mean() > s[~inc].mean()


def test_audit_refuses_what_it_cannot_audit():
    with pytest.raises(ValueError, match="canaries"):
        D.audit_dpsgd(1.0, DELTA, steps=1, sample_rate=1.0, canaries=4)
    with pytest.raises(P.PrivacyError):
        D.audit_dpsgd(math.inf, DELTA, steps=1, sample_rate=1.0, canaries=100)
