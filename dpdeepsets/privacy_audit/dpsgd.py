"""White-box audit of the DP-SGD baseline with Dirac canaries (Steinke, Nasr & Jagielski 2023).

What runs.  The pipeline's own DP-SGD components (:mod:`dpdeepsets.baselines`): the step
count, sample rate and noise multiplier from :func:`~dpdeepsets.baselines.plan_dp` (i.e. the
privacy module's calibration), the Poisson sampler :func:`~dpdeepsets.baselines.poisson_sample`
fed by the noise source's ``poisson`` generator, opacus' per-sample gradients and
``DPOptimizer`` with the source's ``gaussian`` generator (:func:`~dpdeepsets.baselines.make_private`),
the multiplicity fold and one update (:func:`~dpdeepsets.baselines.private_step`).  The data
rows are a workload: the tiny LoRA-UNet of the tests (:func:`tiny_lora_unet_workload`, the
pipeline's denoising loss) or, for many cheap runs, a linear model (:func:`linear_workload`).

The canaries.  m extra examples, each included in the training set independently with
probability 1/2 (the auditor's secret coins).  Canary j's per-example gradient is a Dirac:
2C e_j in a block of m coordinates that no data row touches (a parameter the optimizer
holds but the model does not use), 0 elsewhere; the optimizer clips it to C e_j and adds the
noise like every other gradient.  The auditor observes the privatised gradient of every
step in those coordinates (white box: every intermediate update, which is what DP-SGD's
accounting covers).  With full batches canary j's coordinate is, per step, C [j included] +
N(0, (zC)^2): its score is the sum over steps, and the per-canary mechanism is exactly the
Gaussian of mu = sqrt(T)/z that the accountant certifies.  With Poisson sampling (q < 1) the
score is the log-likelihood ratio under the claimed z.  Runs are cheap, so several runs are
pooled: each canary is in one run only and runs have independent noise (their own cell
identity), so the pooled runs are still (eps, delta)-DP with respect to each canary.

The bound.  :func:`~dpdeepsets.privacy_audit.stats.one_run_audit`: guess "in" for the top
and "out" for the bottom scores, count the correct guesses, Steinke et al.'s Thm. 3.1; the
guessed fraction is chosen on half of the canaries and evaluated on the other half.

Honest limits (delta = 1e-5, alpha = 0.05; ``benchmarks/results/privacy_audit.log`` and
:func:`ideal_scores`, the exactly accounted mechanism under the same audit).  The one-run
bound is loose and noisy even with 1e5 canaries.  Full batch, T = 20, claimed eps
0.25 / 1 / 4: the correct step audits to 0.04 / 0.61 / 2.47 (ideal 0.04 / 0.64 / 2.36), the
halved noise multiplier (true eps 0.6 / 2.2 / 9.1) to 0.31 / 0.75 / 4.81 (ideal 0.35 / 1.37 /
4.73): caught at 0.25 and 4, at 1 only in some draws (1.26 with another draw, 0.75 here:
the guessed fraction is chosen on 5e4 canaries and that choice is noisy).  At claimed
eps 8 the halved multiplier (true eps 19) audits to ~7.2 with 1e5 canaries, under the
claim and near the ceiling (8.2).  Poisson sampling (q = 0.25, T = 20, PRV, 5e4 canaries):
halved z (true eps 2.6 / 14 at claims 1 / 4) audits to 1.25 / 3.38 (ideal 0.89 / 3.06):
caught at 1 (barely, in this draw), not at 4, because a canary enters only ~5 of the 20
steps and the one-run bound sees little of the privacy loss.  Tiny LoRA-UNet (full batch,
T = 1, 2e4 canaries, eps 4): correct 1.91, halved 4.26: caught.  No setting certifies more
than ``epsilon_ceiling`` (7-8 for 1e4-1e5 canaries).

Real code vs ideal, Poisson rows.  One draw of each can differ by a lot: the old single-draw
log had the real code at 0.48 against the ideal's 0.01 at claimed eps 1.  That gap is noise,
not a sampler or canary that behaves unlike the accountant's model: over 16 independent
draws per row (``benchmarks/audit_draws.py``; ``audit_draws.log`` and ``audit_draws_repeat.log``)
the two bound distributions agree (Mann-Whitney p 0.60-1.00; correct code at eps 1: real
mean 0.41, ideal 0.45; at eps 4: 1.80 vs 1.77) and so do the canaries' score moments; the
ideal's 0.01 was its lowest draw (seed 0).  Compare distributions over draws, never one draw.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dpdeepsets import baselines as B
from dpdeepsets import noise as N
from dpdeepsets import privacy as P

from .release import AUDIT_KEY
from .stats import one_run_audit

__all__ = [
    "Workload",
    "linear_workload",
    "lora_unet_workload",
    "tiny_lora_unet_workload",
    "halve_noise_multiplier",
    "PLANTED_DPSGD_BUGS",
    "canary_scores",
    "ideal_scores",
    "audit_dpsgd",
]

CANARY_GRAD_NORM = 2.0  # in units of the clip norm: every canary gradient is clipped


@dataclass
class Workload:
    """The data rows of the audited DP-SGD fits.

    ``build()`` returns a fresh model whose trainable parameters are the fit's;
    ``row_losses(net, idx, gen)`` returns (losses of the rows of examples ``idx`` through
    ``net``, the number of examples b, the rows per example k), rows example-major, as
    :func:`dpdeepsets.baselines.row_losses` does; ``gen`` is public randomness.
    """

    name: str
    n_data: int
    build: Callable[[], torch.nn.Module]
    row_losses: Callable
    noise_multiplicity: int = 1


def linear_workload(n_data: int = 32, dim: int = 8, seed: int = 0) -> Workload:
    """A linear regression (y ~ <w, x>), squared loss: cheap rows for many runs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_data, dim, generator=gen)
    y = x @ torch.randn(dim, generator=gen) + 0.1 * torch.randn(n_data, generator=gen)

    def build():
        torch.manual_seed(seed)
        return torch.nn.Linear(dim, 1)

    def row_losses(net, idx, gen):
        return (net(x[idx]).squeeze(-1) - y[idx]) ** 2, len(idx), 1

    return Workload(f"linear (d={dim}, n={n_data})", n_data, build, row_losses)


def lora_unet_workload(unet, scheduler, targets, basis, images: torch.Tensor, *, rank: int,
                       alpha: float, noise_multiplicity: int = 1,
                       parametrisation: str = "gauge_fixed", name: str = "LoRA-UNet") -> Workload:
    """The pipeline's LoRA-UNet fit: :func:`~dpdeepsets.baselines.build_lora_unet` on a copy of
    ``unet`` (B = 0) and the denoising loss of :func:`~dpdeepsets.baselines.row_losses` with
    ``noise_multiplicity`` (timestep, noise) draws per example."""
    shape = tuple(images.shape[1:])
    t_max = scheduler.config.num_train_timesteps
    k = int(noise_multiplicity)

    def build():
        return B.build_lora_unet(copy.deepcopy(unet), targets, basis, None, rank=rank, alpha=alpha,
                                 parametrisation=parametrisation)

    def row_losses(net, idx, gen):
        t, eps = B.draw_multiplicity(len(idx), k, shape, t_max, gen)
        return B.row_losses(net, scheduler, images[idx], t, eps), len(idx), k

    return Workload(name, images.shape[0], build, row_losses, k)


def tiny_unet():
    """A small seeded DDPM UNet with attention (1 channel, 16 px) and its scheduler: the audit's
    model and the tests' ``tiny_unet`` fixture. Every weight is non-zero (diffusers zero-inits
    some output convs, which would hide their gradients)."""
    from dpdeepsets.diffusion import build_scheduler, build_unet

    torch.manual_seed(0)
    unet = build_unet(image_size=16, channels=1, block_out_channels=(16, 32), layers_per_block=1,
                      attention_levels=[1], norm_num_groups=8, attention_head_dim=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.eval().requires_grad_(False)
    return unet, build_scheduler(1000, "squaredcos_cap_v2")


def smooth_blobs(n_images: int, seed: int = 3) -> torch.Tensor:
    """``n_images`` seeded 16 px images of smooth random blobs in (-1, 1), so the denoising
    loss has something to learn: :func:`tiny_unet`'s data here and in the tests."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n_images, 1, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(base, size=16, mode="bilinear").tanh()


def tiny_lora_unet_workload(n_images: int = 24, rank: int = 2, noise_multiplicity: int = 1) -> Workload:
    """:func:`tiny_unet`, LoRA of ``rank`` on the schema's default targets, and
    :func:`smooth_blobs` as images."""
    from dpdeepsets import lora as L
    from dpdeepsets.config import load_config

    unet, sched = tiny_unet()
    targets = L.find_targets(unet, load_config(None)["lora"]["target_modules"], rank)
    basis = L.make_basis(targets, rank, 0)
    return lora_unet_workload(unet, sched, targets, basis, smooth_blobs(n_images), rank=rank,
                              alpha=rank, noise_multiplicity=noise_multiplicity,
                              name=f"tiny LoRA-UNet (rank {rank}, n={n_images})")


def halve_noise_multiplier(plan: B.DPPlan) -> B.DPPlan:
    """PLANTED BUG: the noise multiplier halved after calibration (the claim is unchanged)."""
    return dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier / 2)


PLANTED_DPSGD_BUGS = {"noise multiplier halved": halve_noise_multiplier}


def _dp_run(workload: Workload, plan: B.DPPlan, hyper: B.Hyper, noise, included: np.ndarray,
            draws_seed: int) -> torch.Tensor:
    """One DP-SGD fit with Dirac canaries; returns the privatised canary gradients [T, m]."""
    m = len(included)
    model = workload.build().train()
    params = B.trainable(model)
    canary = torch.nn.Parameter(torch.zeros(m))  # held by the optimizer, unused by the model
    opt = B._optimizer(params + [canary], hyper)
    net, dp_opt = B.make_private(model, opt, plan, noise, "functorch", "cpu")
    poisson = noise.torch_generator("poisson")
    draws = torch.Generator().manual_seed(draws_seed)
    members = torch.from_numpy(np.flatnonzero(included))
    n_data = workload.n_data
    grad = CANARY_GRAD_NORM * plan.max_grad_norm
    obs = torch.empty(plan.steps, m)
    try:
        for step in range(plan.steps):
            mask = B.poisson_sample(n_data + len(members), plan.sample_rate, poisson)
            idx = torch.nonzero(mask[:n_data]).flatten()
            sampled = members[mask[n_data:]]
            empty = len(idx) == 0
            if empty:  # as fit_lora: a zero-weight dummy row
                idx = torch.zeros(1, dtype=torch.long)
            rows, b, k = workload.row_losses(net, idx, draws)
            loss = rows.mean() * (0.0 if empty else 1.0)
            dp_opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # opacus' hooks on a model whose input needs no grad
                warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
                loss.backward()
            B.fold_multiplicity(params, b, k)
            c = len(sampled)
            for p in params:  # the canaries' gradients are 0 in the model's coordinates
                p.grad_sample = torch.cat([p.grad_sample, p.grad_sample.new_zeros((c, *p.shape))])
            g = torch.zeros(b + c, m)
            g[b + torch.arange(c), sampled] = grad
            canary.grad_sample = g
            B.private_step(dp_opt, params + [canary])
            obs[step] = canary.grad.detach()
    finally:
        dp_opt.zero_grad(set_to_none=True)
        if hasattr(net, "_close"):
            net._close()
    return obs


def _likelihood_scores(x: np.ndarray, z: float, q: float) -> np.ndarray:
    """Scores of normalised observations x [T, m] (N(0, 1), plus 1/z when the canary was in)."""
    if q == 1.0:
        return x.sum(axis=0)
    return np.log1p(q * np.expm1(x / z - 0.5 / z**2)).sum(axis=0)


def canary_scores(obs, plan: B.DPPlan) -> np.ndarray:
    """Per-canary score from privatised canary gradients ``obs`` [T, m] (higher = included).

    Normalised by the claimed noise (x = obs * expected batch / (z C): N(0, 1) plus 1/z in
    steps that had the canary): full batch, the sum over steps (sufficient); Poisson
    sampling, the log-likelihood ratio sum_t log(1 - q + q exp(x_t / z - 1 / (2 z^2))).
    """
    z, q = plan.noise_multiplier, plan.sample_rate
    x = np.asarray(obs, dtype=np.float64) * (q * plan.n) / (z * plan.max_grad_norm)
    return _likelihood_scores(x, z, q)


def ideal_scores(noise_multiplier: float, sample_rate: float, steps: int, canaries: int,
                 claimed_noise_multiplier: float | None = None, seed: int = 0):
    """(scores, included) of the IDEAL mechanism: what :func:`audit_dpsgd` sees if the code is
    exactly the accounted Poisson-sampled Gaussian (``noise_multiplier``), scored with the
    claimed one.  Planning only (what the audit can certify at best); no pipeline code runs."""
    z, q = float(noise_multiplier), float(sample_rate)
    zc = z if claimed_noise_multiplier is None else float(claimed_noise_multiplier)
    rng = np.random.default_rng([seed, 0x1DEA])
    inc = rng.random(canaries) < 0.5
    sampled = (rng.random((steps, canaries)) < q) & inc
    x = sampled / zc + (z / zc) * rng.standard_normal((steps, canaries))
    return _likelihood_scores(x, zc, q), inc


def audit_dpsgd(
    epsilon: float,
    delta: float,
    *,
    steps: int,
    sample_rate: float,
    canaries: int,
    runs: int = 1,
    workload: Workload | None = None,
    accountant: str = "auto",
    prv_max_epsilon: float = 64.0,
    plan_hook: Callable[[B.DPPlan], B.DPPlan] | None = None,
    max_grad_norm: float = 1.0,
    lr: float = 0.05,
    momentum: float = 0.9,
    key: bytes = AUDIT_KEY,
    seed: int = 0,
    alpha: float = 0.05,
    select_fraction: float = 0.5,
    return_scores: bool = False,
) -> dict:
    """Empirical lower bound on the epsilon of the DP-SGD baseline (see the module docstring).

    ``runs`` fits of ``steps`` steps on ``workload`` (default :func:`linear_workload`) plus
    ``canaries`` Dirac canaries each; the public set size is the data plus half the
    canaries (their expected number), the expected batch ``sample_rate`` times it.  The plan
    (noise multiplier, accountant) comes from :func:`~dpdeepsets.baselines.plan_dp`;
    ``plan_hook`` may change it after calibration (a planted bug, e.g.
    :func:`halve_noise_multiplier`), while the claim stays the calibrated plan's accounted
    epsilon.  Each run has its own keyed noise source (``key``, cell identity: workload,
    epsilon, steps, sample rate, bug, seed, run).  ``caught``: bound > accounted epsilon.

    Returns dict(epsilon_claimed (the accountant's, <= epsilon), epsilon_target, accountant,
    noise_multiplier (calibrated), noise_multiplier_used, sample_rate, steps, runs,
    canaries_per_run, workload, bug, epsilon_lower_bound, epsilon_ceiling, canaries (audited),
    guesses, correct, caught, seconds, score_in / score_out: mean and standard deviation of
    the included / excluded canaries' scores; with full batches, under the claim, (T/z, sqrt(T))
    and (0, sqrt(T))); with ``return_scores`` also ``scores`` and ``included`` (the arrays the
    bound was computed from, for comparisons over repeated draws: benchmarks/audit_draws.py).
    """
    workload = workload or linear_workload()
    if runs < 1 or canaries < 8:
        raise ValueError(f"need runs >= 1 and canaries >= 8, got {runs!r}, {canaries!r}")
    n_public = workload.n_data + canaries // 2
    q_req = float(sample_rate)
    batch = n_public if q_req >= 1.0 else max(1, round(q_req * n_public))
    hyper = B.Hyper(steps=int(steps), batch_size=batch, lr=lr, momentum=momentum,
                    max_grad_norm=max_grad_norm, noise_multiplicity=workload.noise_multiplicity,
                    optimizer="sgd", source="privacy audit")
    plan = B.plan_dp(hyper, n=n_public, epsilon=epsilon, delta=delta, accountant=accountant,
                     prv_max_epsilon=prv_max_epsilon)
    claimed = P.dpsgd_epsilon(plan.noise_multiplier, plan.sample_rate, plan.steps, delta, plan.accountant)
    used = plan_hook(plan) if plan_hook is not None else plan
    bug = getattr(plan_hook, "__name__", None) if plan_hook is not None else None
    t0 = time.perf_counter()
    scores, included = [], []
    for run in range(runs):
        inc = np.random.default_rng([seed, run, 0xCA7]).random(canaries) < 0.5
        noise = N.KeyedNoise(key, N.cell_identity(audit="dpsgd", workload=workload.name,
                                                  epsilon=float(epsilon), steps=int(steps),
                                                  sample_rate=repr(plan.sample_rate), bug=str(bug),
                                                  seed=int(seed), run=run))
        obs = _dp_run(workload, used, hyper, noise, inc, draws_seed=seed * 1000 + run)
        scores.append(canary_scores(obs.numpy(), plan))  # scored with the CLAIMED plan
        included.append(inc)
    seconds = time.perf_counter() - t0
    scores, included = np.concatenate(scores), np.concatenate(included)
    r = one_run_audit(scores, included, delta, alpha, select_fraction)
    if return_scores:
        r = {**r, "scores": scores, "included": included}
    return {"epsilon_claimed": float(claimed), "epsilon_target": float(epsilon),
            "accountant": plan.accountant, "noise_multiplier": plan.noise_multiplier,
            "noise_multiplier_used": used.noise_multiplier, "sample_rate": plan.sample_rate,
            "steps": plan.steps, "runs": int(runs), "canaries_per_run": int(canaries),
            "workload": workload.name, "bug": bug, **r,
            "caught": r["epsilon_lower_bound"] > claimed, "alpha": float(alpha),
            "delta": float(delta), "seconds": seconds,
            "score_in": (float(scores[included].mean()), float(scores[included].std())),
            "score_out": (float(scores[~included].mean()), float(scores[~included].std()))}
