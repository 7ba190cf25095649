"""Gradient-based LoRA fits: the DP-SGD baselines, the non-private reference, the public-pool LoRA.

One loop, :func:`fit_lora`, for every gradient-based method of the registry
(:mod:`dpdeepsets.methods`): what differs between methods is data, not code paths:

``dpsgd``            DP-SGD from B = 0 (the usual LoRA start);
``public_ft_dpsgd``  DP-SGD from the public-pool LoRA (``Method.public_start``);
``pda_dpmd``         public-data-assisted mirror descent (Amid et al. 2022), first-order
                     form: ``theta <- theta - lr [a_t g~_priv + (1 - a_t) grad L_pub(theta)]``,
                     ``a_t = cos(pi t / 2T)``, from the public-pool LoRA
                     (``Method.public_gradient``; the public gradient costs no privacy);
``nonprivate``       the same loop without clipping or noise (NOT private; the ceiling);
the public-pool LoRA the same non-private loop on the public pool.

DP-SGD (``dp`` given). Each step draws a Poisson batch (every example independently with
probability q = expected batch / n, n the public set size) from the noise source's
``poisson`` generator, computes per-example gradients with opacus (``functorch`` mode: exact
for any memory layout), clips each to ``max_grad_norm`` and adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` from the source's ``gaussian`` generator (opacus'
``DPOptimizer``; with ``secure`` noise its floating-point-attack mitigation). The noise
multiplier and the final epsilon come from :mod:`dpdeepsets.privacy` (exact GDP for
full-batch training, opacus' PRV or RDP accountant otherwise); this module calibrates
nothing itself. Both generators come from the secret key (or OS entropy): no public value
determines the noise or the batches, and no seed is logged. The sampler
(:func:`poisson_sample`), the DP optimizer (:func:`make_private`) and one DP update
(:func:`private_step`) are functions of their own, so that the DP-SGD audit
(:mod:`dpdeepsets.privacy_audit.dpsgd`) runs the very code of this loop. Per-step losses of a DP fit
are private and are never logged or stored.

Optimizer and the field's recipe. ``sgd`` (with momentum), ``adam`` or ``adamw``
(``weight_decay``), wrapped by opacus' DPOptimizer: the optimizer only sees the privatised
gradient, so the choice costs no privacy. Strong DP fine-tuning of diffusion models
(the published configs of DPDM, DP-LDM, DP-LoRA, DPImageBench) uses Adam(W) with a tiny clip
norm (every per-example gradient is normalised; Adam's step does not shrink with C), full
or near-full batches, noise multiplicity K and an EMA of the weights. With SGD the step
is lr * C * (signal + noise) per step, so a small clip needs a large lr, and a fixed lr
bounds how far T steps can move the LoRA (lr * C * T / (1 - momentum)): the old default
(SGD, clip 0.02, 20 steps) never left the base model. Every one of these choices is a key
of :class:`Hyper` that ``tune_baselines`` searches on public proxy sets, per method and
epsilon; the measured comparison of the optimizers is docs/baselines.md's tuning table.

EMA (``ema`` > 0): the exported LoRA is an exponential moving average of the iterates,
``shadow <- d_t shadow + (1 - d_t) theta`` with the warm-up ``d_t = min(ema, (1 + t) /
(10 + t))`` (so a short fit is not dominated by its start). Averaging iterates is
post-processing of the privatised steps: free in privacy.

Noise multiplicity. Each example of a step gets ``K`` independent (timestep, noise) draws;
its gradient is the gradient of its *mean* denoising loss over the ``K`` draws, and that
per-example gradient is what is clipped. The draws do not depend on the data, so this is
free in privacy. The ``B * K`` noised rows go through the UNet as one batch; opacus
computes one gradient per row, and :func:`fold_multiplicity` averages the ``K`` rows of each
example before the optimizer clips (rows are independent: the UNet has no cross-example
layers). The diffusion draws are public randomness (seeded; they protect nothing).

The per-sample-gradient trap: opacus 1.6's ``hooks`` grad sampler for ``nn.Conv2d`` re-strides
its input assuming contiguous NCHW memory; diffusers' attention blocks emit channels_last
tensors, so every conv fed by an attention block gets silently wrong per-sample gradients.
Only ``functorch`` is allowed for DP fits; ``tests/unit/test_baselines.py`` compares it
with per-example autograd and shows that ``hooks`` fails the comparison.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import lora as L
from .methods import Method

log = logging.getLogger(__name__)

PARAMETRISATIONS = ("gauge_fixed", "full")
OPTIMIZERS = ("sgd", "adam", "adamw")
EXACT_GRAD_SAMPLE_MODES = ("functorch",)
HYPER_KEYS = ("steps", "batch_size", "lr", "momentum", "max_grad_norm", "noise_multiplicity", "optimizer",
              "ema", "weight_decay")


# ---------------------------------------------------------------- hyperparameters

@dataclass(frozen=True)
class Hyper:
    """The hyperparameters of one fit (``baselines`` defaults, then a ``tuned`` entry)."""

    steps: int
    batch_size: int  # DP: the expected Poisson batch; otherwise the batch
    lr: float
    momentum: float
    max_grad_norm: float
    noise_multiplicity: int
    optimizer: str = "sgd"
    ema: float = 0.0  # EMA decay of the exported LoRA (0: the last iterate)
    weight_decay: float = 0.0  # adamw only
    source: str = "baselines defaults"  # where the values came from (ledger, logs)


def hyperparameters(cfg: dict, method: str, epsilon: float) -> Hyper:
    """The values ``method`` uses at ``epsilon`` (inf for non-private fits).

    The ``baselines`` section's values, overridden by the ``baselines.tuned`` entry of this
    method and epsilon if there is one (written by ``snakemake tune_baselines``, chosen on
    public proxy sets: no private data).
    """
    values = {k: cfg[k] for k in HYPER_KEYS if k in cfg}
    source = "baselines defaults"
    for entry in cfg.get("tuned") or []:
        if entry["method"] == method and float(entry["epsilon"]) == float(epsilon):
            values.update({k: entry[k] for k in HYPER_KEYS if k in entry})
            source = f"baselines.tuned ({entry.get('provenance', 'tune_baselines')})"
            break
    return Hyper(steps=int(values["steps"]), batch_size=int(values["batch_size"]),
                 lr=float(values["lr"]), momentum=float(values["momentum"]),
                 max_grad_norm=float(values["max_grad_norm"]),
                 noise_multiplicity=int(values["noise_multiplicity"]),
                 optimizer=str(values["optimizer"]), ema=float(values.get("ema", 0.0)),
                 weight_decay=float(values.get("weight_decay", 0.0)), source=source)


@dataclass(frozen=True)
class DPPlan:
    """The privacy parameters of one DP-SGD fit, from :mod:`dpdeepsets.privacy`."""

    epsilon: float
    delta: float
    n: int  # public set size: the sample rate is batch / n (never the actual row count)
    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    accountant: str


def public_pool_hyper(cfg: dict) -> Hyper:
    """The non-private fit of the public-pool LoRA (the start of public_ft_dpsgd, pda_dpmd)."""
    return Hyper(steps=int(cfg["public_steps"]), batch_size=int(cfg["public_batch_size"]),
                 lr=float(cfg["public_lr"]), momentum=0.0, max_grad_norm=math.inf,
                 noise_multiplicity=int(cfg["noise_multiplicity"]), optimizer="adam",
                 source="baselines.public_*")


def plan_dp(hyper: Hyper, *, n: int, epsilon: float, delta: float, accountant: str,
            prv_max_epsilon: float) -> DPPlan:
    """Calibrate one DP-SGD fit: sample rate min(1, batch / n), noise multiplier for (eps, delta)."""
    from . import privacy

    q = min(1.0, hyper.batch_size / n)
    acc = privacy.resolve_accountant(accountant, epsilon, q, prv_max_epsilon)
    z = privacy.dpsgd_noise_multiplier(float(epsilon), float(delta), q, hyper.steps, acc)
    return DPPlan(epsilon=float(epsilon), delta=float(delta), n=int(n), sample_rate=q,
                  steps=hyper.steps, noise_multiplier=z, max_grad_norm=hyper.max_grad_norm,
                  accountant=acc)


# ---------------------------------------------------------------- the model

class LoRAUNet(torch.nn.Module):
    """The frozen UNet with :class:`~dpdeepsets.lora.ModuleLoRALayer` s; ``forward(x_t, t)``
    predicts the noise."""

    def __init__(self, unet: torch.nn.Module, names: list[str]):
        super().__init__()
        self.unet = unet
        self.lora_names = list(names)

    def layers(self) -> dict[str, L.ModuleLoRALayer]:
        return {n: self.unet.get_submodule(n) for n in self.lora_names}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample


def build_lora_unet(unet, targets: list[L.Target], a: dict, b: dict | None, *, rank: int,
                    alpha: float, parametrisation: str) -> LoRAUNet:
    """Wrap ``unet``'s targets (in place) for a gradient fit; B = 0 unless ``b`` is given."""
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"baselines.parametrisation must be one of {PARAMETRISATIONS}, "
                         f"got {parametrisation!r}")
    layers = L.attach_modules(unet, targets, a, b, rank=rank, alpha=alpha,
                              train_a=parametrisation == "full")
    return LoRAUNet(unet, list(layers))


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def export_factors(model: LoRAUNet) -> tuple[dict, dict]:
    """(A per target in PEFT shape, B per target as [out, r]) for :func:`lora.save_peft_adapter`."""
    a, b = {}, {}
    for name, layer in model.layers().items():
        a[name], b[name] = layer.factors()
    return a, b


# ---------------------------------------------------------------- the loss

def draw_multiplicity(batch: int, k: int, shape, t_max: int, gen: torch.Generator):
    """``K`` timesteps and noises per example: ``t [B, K]``, ``noise [B, K, *shape]`` (CPU)."""
    t = torch.randint(0, t_max, (batch, k), generator=gen)
    noise = torch.randn((batch, k, *shape), generator=gen)
    return t, noise


def row_losses(model, scheduler, x0: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor) -> torch.Tensor:
    """Denoising loss of every (example, draw) row, ``[B * K]`` (rows example-major)."""
    b, k = t.shape
    x0k = x0[:, None].expand(b, k, *x0.shape[1:]).reshape(b * k, *x0.shape[1:])
    n = noise.reshape(b * k, *x0.shape[1:])
    tt = t.reshape(b * k)
    xt = scheduler.add_noise(x0k, n, tt)
    pred = model(xt, tt)
    return F.mse_loss(pred, n, reduction="none").flatten(1).mean(1)


def example_losses(model, scheduler, x0, t, noise) -> torch.Tensor:
    """Per-example loss ``[B]``: the mean of its ``K`` rows (the per-example objective)."""
    b, k = t.shape
    return row_losses(model, scheduler, x0, t, noise).view(b, k).mean(1)


def fold_multiplicity(params, batch: int, k: int) -> None:
    """Turn opacus' per-row ``grad_sample [B*K, ...]`` into per-example ``[B, ...]`` (mean over K).

    With ``loss = mean over the B*K rows`` and ``loss_reduction="mean"``, opacus scales each
    row's gradient to that of its own row loss; the per-example gradient (of the mean over
    the example's K draws) is the mean of its K rows.
    """
    if k == 1:
        return
    for p in params:
        gs = p.grad_sample
        if isinstance(gs, list):
            raise RuntimeError("grad_sample accumulated over several backward passes")
        if gs.shape[0] != batch * k:
            raise RuntimeError(f"grad_sample has {gs.shape[0]} rows, expected {batch}*{k}")
        p.grad_sample = gs.view(batch, k, *gs.shape[1:]).mean(1)


def alpha_schedule(step: int, total: int) -> float:
    """PDA-DPMD weight of the private gradient: ``cos(pi t / 2T)`` (1 at t = 0, -> 0 at T)."""
    return math.cos(math.pi * step / (2 * total))


# ---------------------------------------------------------------- the loop

@dataclass
class FitResult:
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)  # non-private fits only
    privacy: dict | None = None  # DP fits: the accountant's numbers
    # (steps, ema) -> (A, B) of the same run (``variants_at`` / ``variant_emas``): tuning reads
    # several candidates off one fit; the DP guarantee of each is the run's (post-processing)
    variants: dict = field(default_factory=dict)


def _optimizer(params, hyper: Hyper):
    if hyper.optimizer == "adam":
        return torch.optim.Adam(params, lr=hyper.lr)
    if hyper.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hyper.lr, momentum=hyper.momentum)
    raise ValueError(f"baselines.optimizer must be one of {OPTIMIZERS}, got {hyper.optimizer!r}")


class EMA:
    """Exponential moving average of parameters, with the warm-up d_t = min(decay, (1+t)/(10+t)).

    ``decay`` 0 keeps nothing: ``values()`` are the parameters themselves (the last iterate)."""

    def __init__(self, params, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"baselines.ema must be in [0, 1), got {decay!r}")
        self.decay, self.params, self.t = float(decay), list(params), 0
        self.shadow = [p.detach().clone() for p in self.params] if decay > 0 else []

    @torch.no_grad()
    def update(self) -> None:
        if not self.shadow:
            return
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.t += 1

    def values(self) -> list[torch.Tensor]:
        return self.shadow if self.shadow else [p.detach() for p in self.params]


@torch.no_grad()
def _factors_with(model: "LoRAUNet", params, values) -> tuple[dict, dict]:
    """The model's (A, B) with ``params`` temporarily set to ``values`` (cloned)."""
    saved = [p.detach().clone() for p in params]
    for p, v in zip(params, values):
        p.copy_(v)
    a, b = export_factors(model)
    a = {k: v.clone() for k, v in a.items()}
    b = {k: v.clone() for k, v in b.items()}
    for p, v in zip(params, saved):
        p.copy_(v)
    return a, b


def poisson_sample(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson sampling: a boolean mask over ``n`` rows, each in the batch independently with
    probability ``sample_rate``, drawn from ``generator`` (the noise source's secret ``poisson``
    stream). Shared by :func:`fit_lora` and the DP-SGD audit (:mod:`dpdeepsets.privacy_audit`)."""
    return torch.rand(n, generator=generator) < sample_rate


def make_private(model, opt, plan: DPPlan, noise, grad_sample_mode: str, device):
    """opacus' per-sample-gradient wrapper and DP optimizer, with the source's generators.

    The DP optimizer clips every per-example gradient in ``p.grad_sample`` of every parameter
    of ``opt`` to ``plan.max_grad_norm`` (jointly) and adds N(0, (z C)^2) noise to the sum,
    z = ``plan.noise_multiplier``, from ``noise``'s ``gaussian`` generator; see
    :func:`private_step`."""
    from opacus.grad_sample.utils import wrap_model
    from opacus.optimizers import DPOptimizer

    if grad_sample_mode not in EXACT_GRAD_SAMPLE_MODES:
        # Clipping would bound the wrong vectors: the guarantee would be void, silently.
        raise ValueError(f"baselines.grad_sample_mode={grad_sample_mode!r} computes wrong "
                         f"per-sample gradients for convs fed channels_last tensors (diffusers "
                         f"attention outputs); DP fits use {EXACT_GRAD_SAMPLE_MODES}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        gsm = wrap_model(model, grad_sample_mode, batch_first=True, loss_reduction="mean")
    dp_opt = DPOptimizer(opt, noise_multiplier=plan.noise_multiplier,
                         max_grad_norm=plan.max_grad_norm,
                         expected_batch_size=plan.sample_rate * plan.n, loss_reduction="mean",
                         generator=noise.torch_generator("gaussian", device),
                         secure_mode=noise.secure_mode)
    return gsm, dp_opt


def fit_lora(unet, scheduler, targets: list[L.Target], images: torch.Tensor, *,
             method: Method, hyper: Hyper, rank: int, alpha: float, parametrisation: str,
             basis: dict[str, torch.Tensor], init: tuple[dict, dict] | None = None,
             dp: DPPlan | None = None, noise=None, public_images: torch.Tensor | None = None,
             public_batch_size: int = 32, grad_sample_mode: str = "functorch", draws_seed: int = 0, alpha_fn=alpha_schedule,
             device="cpu", desc: str | None = None, variant_emas=(), variants_at=()) -> FitResult:
    """Fit one LoRA on ``images`` (float NCHW in [-1, 1]); see the module docstring.

    ``init`` = (A, B) to start from (the public-pool LoRA when ``method.public_start``);
    else A = ``basis``, B = 0. ``unet`` is modified in place (wrapped LoRA layers) and must
    be a fresh copy of the base model. ``dp`` (from :func:`plan_dp`) and ``noise`` (a
    :class:`dpdeepsets.noise.NoiseSource`) make the fit DP-SGD; without them it is a plain
    fit of ``hyper.steps`` minibatches (sampled from a generator seeded by ``draws_seed``).

    Variants for tuning (``result.variants[(steps, ema)]``): the LoRA after ``variants_at``
    steps (non-private fits only: a DP fit's noise is calibrated to its full step count),
    averaged with each decay of ``variant_emas`` as well as ``hyper.ema``. Each variant
    equals the fit with those ``steps`` / ``ema`` values run alone.
    """
    if (dp is None) != (noise is None):
        raise ValueError("a DP fit needs both a plan and a noise source")
    if method.public_start and init is None:
        raise ValueError(f"{method.name} starts from the public-pool LoRA: pass init=(A, B)")
    if method.public_gradient and public_images is None:
        raise ValueError(f"{method.name} needs public_images for the public gradient")
    a0, b0 = init if init is not None else (basis, None)
    model = build_lora_unet(unet, targets, a0, b0, rank=rank, alpha=alpha,
                            parametrisation=parametrisation).to(device)
    model.train()
    params = trainable(model)
    opt = _optimizer(params, hyper)
    if dp is not None and any(int(t) != hyper.steps for t in variants_at):
        raise ValueError("a DP fit has no intermediate variants: its noise is calibrated to "
                         f"{hyper.steps} steps")
    if any(not 1 <= int(t) <= hyper.steps for t in variants_at):
        raise ValueError(f"variants_at {list(variants_at)} must lie in 1..{hyper.steps}")
    emas = {d: EMA(params, d) for d in sorted({float(hyper.ema), *map(float, variant_emas)})}
    ema = emas[float(hyper.ema)]
    variants = {}
    n = images.shape[0]
    k = hyper.noise_multiplicity
    shape = tuple(images.shape[1:])
    t_max = scheduler.config.num_train_timesteps
    draws = torch.Generator().manual_seed(draws_seed)
    pub_draws = torch.Generator().manual_seed(draws_seed + 1)
    net, poisson = model, None
    if dp is not None:
        if dp.steps != hyper.steps:
            raise ValueError(f"the plan has {dp.steps} steps, the fit {hyper.steps}")
        net, opt = make_private(model, opt, dp, noise, grad_sample_mode, device)
        poisson = noise.torch_generator("poisson")
    images_cpu = images.cpu()
    order, pos = torch.empty(0, dtype=torch.long), 0
    losses = []
    bar = tqdm(total=hyper.steps, desc=desc or method.name, mininterval=5)
    for step in range(hyper.steps):
        if dp is not None:  # Poisson sampling at rate q from the secret generator
            x0 = images_cpu[poisson_sample(n, dp.sample_rate, poisson)]
        elif hyper.batch_size >= n:  # full batch, as DP-SGD at sample rate 1 sees it
            x0 = images_cpu
        else:  # epochs of shuffled minibatches
            if pos + hyper.batch_size > len(order):
                order, pos = torch.randperm(n, generator=draws), 0
            x0 = images_cpu[order[pos:pos + hyper.batch_size]]
            pos += hyper.batch_size
        x0 = x0.to(device)
        g_pub = None
        if method.public_gradient:
            g_pub = _public_gradient(net, model, scheduler, public_images, public_batch_size,
                                     k, pub_draws, shape, t_max, device)
        empty = x0.shape[0] == 0
        if empty:  # an empty Poisson batch: a zero-weight dummy row, the step adds noise only
            x0 = torch.zeros((1, *shape), device=device)
        b = x0.shape[0]
        t, eps_draw = draw_multiplicity(b, k, shape, t_max, draws)
        rows = row_losses(net, scheduler, x0, t.to(device), eps_draw.to(device))
        loss = rows.mean() * (0.0 if empty else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dp is not None:
            fold_multiplicity(params, b, k)
            private_step(opt, params, g_pub,
                         None if g_pub is None else float(alpha_fn(step, hyper.steps)))
        else:
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 20 == 0 or step + 1 == hyper.steps:
                log.info("step %d/%d loss %.4f", step + 1, hyper.steps,
                         sum(losses[-20:]) / len(losses[-20:]))
        for e in emas.values():
            e.update()
        if step + 1 in {int(t) for t in variants_at} or (variants_at or variant_emas) and step + 1 == hyper.steps:
            for d, e in emas.items():
                variants[(step + 1, d)] = _factors_with(model, params, e.values())
        bar.update(1)
    bar.close()
    with torch.no_grad():  # the exported LoRA: the average of the iterates (post-processing)
        for p, v in zip(params, ema.values()):
            p.copy_(v)
    info = None
    if dp is not None:
        opt.zero_grad(set_to_none=True)
        info = _accounted(dp, grad_sample_mode)
        if hasattr(net, "_close"):
            net._close()
    a, b = export_factors(model)
    return FitResult(a=a, b=b, losses=losses, privacy=info, variants=variants)


def private_step(opt, params, g_pub=None, a_t: float | None = None) -> None:
    """One DP-SGD update from the per-example gradients in ``p.grad_sample``.

    opacus' ``pre_step`` clips each example's gradient (over all of ``opt``'s parameters),
    adds the Gaussian noise and divides by the expected batch, leaving the privatised
    gradient in ``p.grad``; PDA-DPMD then mixes in the public gradient ``g_pub`` (weight
    ``1 - a_t``); the wrapped optimizer steps. Factored out of :func:`fit_lora` so that the
    DP-SGD audit (:mod:`dpdeepsets.privacy_audit.dpsgd`) runs this very code.
    """
    if not opt.pre_step():  # clip, noise, scale (one step)
        raise RuntimeError("opacus skipped a step (virtual steps are not used here)")
    if g_pub is not None:
        for p, gp in zip(params, g_pub):
            p.grad.mul_(a_t).add_(gp, alpha=1.0 - a_t)
    opt.original_optimizer.step()


def _accounted(dp: DPPlan, grad_sample_mode: str) -> dict:
    """The privacy module's epsilon for the steps made; must not exceed the target."""
    from .privacy import PrivacyError, dpsgd_epsilon

    spent = dpsgd_epsilon(dp.noise_multiplier, dp.sample_rate, dp.steps, dp.delta, dp.accountant)
    if spent > dp.epsilon * (1 + 1e-9):
        raise PrivacyError(f"DP-SGD accountant reports epsilon {spent} > target {dp.epsilon}")
    log.info("DP-SGD: %s accountant, epsilon %.4f <= target %g after %d steps (noise "
             "multiplier %.4f, sample rate %.4f)", dp.accountant, spent, dp.epsilon, dp.steps,
             dp.noise_multiplier, dp.sample_rate)
    return {"accounted_epsilon": spent, "noise_multiplier": dp.noise_multiplier,
            "sample_rate": dp.sample_rate, "steps": dp.steps, "accountant": dp.accountant,
            "expected_batch_size": dp.sample_rate * dp.n, "grad_sample_mode": grad_sample_mode}


def _public_gradient(net, model, scheduler, public_images, batch_size: int, k: int, gen, shape,
                     t_max, device):
    """Gradient of the public denoising loss at the current LoRA (public data only, no hooks)."""
    params = trainable(model)
    idx = torch.randint(0, public_images.shape[0], (batch_size,), generator=gen)
    x0 = public_images[idx].to(device)
    t, noise = draw_multiplicity(x0.shape[0], k, shape, t_max, gen)
    disable = getattr(net, "disable_hooks", None)
    if disable is not None:
        net.disable_hooks()
    try:
        loss = row_losses(model, scheduler, x0, t.to(device), noise.to(device)).mean()
        grads = torch.autograd.grad(loss, params)
    finally:
        if disable is not None:
            net.enable_hooks()
    return [g.detach() for g in grads]


# ---------------------------------------------------------------- ledger

def ledger_entry(*, method: str, pset: str, seed: int, epsilon: float, delta: float, n: int,
                 dim: int, hyper: Hyper, parametrisation: str, privacy: dict | None,
                 noise=None) -> dict:
    """A privacy-ledger entry of one fit (the keys of :func:`dpdeepsets.report.ledger_table`).

    DP fits: the privacy module's numbers (noise multiplier as ``sigma``, the clip norm as
    ``sensitivity``, the accounted epsilon, sample rate, steps, accountant), add/remove-one
    adjacency (Poisson sampling; n is the public set size). ``nonprivate``: a non-private
    reference row (epsilon = inf). Neither holds a seed or a private loss (``replicate`` is
    the experiment's repetition index, from which no noise follows without the key).
    """
    entry = {"pset": pset, "replicate": int(seed), "method": method, "n": int(n), "dim": int(dim),
             "clip_norm": hyper.max_grad_norm, "parametrisation": parametrisation,
             "noise_multiplicity": hyper.noise_multiplicity, "lr": hyper.lr,
             "batch_size": hyper.batch_size, "optimizer": hyper.optimizer, "ema": hyper.ema,
             "hyperparameters": hyper.source}
    if privacy is None:
        entry.update({"epsilon": math.inf, "delta": 0.0, "sigma": 0.0, "sensitivity": math.nan,
                      "adjacency": "none", "private": False, "noise_source": "none",
                      "mechanism": "none (non-private reference, epsilon=inf)",
                      "accounted_epsilon": math.inf, "noise_multiplier": 0.0,
                      "sample_rate": math.nan, "steps": hyper.steps, "accountant": "none"})
        return entry
    entry.update({"epsilon": float(epsilon), "delta": float(delta),
                  "sigma": privacy["noise_multiplier"], "sensitivity": hyper.max_grad_norm,
                  "adjacency": "add_remove", "private": bool(noise.private), **noise.ledger(),
                  "mechanism": f"dp-sgd (opacus per-sample gradients, {privacy['accountant']} accountant)",
                  **{k: privacy[k] for k in ("accounted_epsilon", "noise_multiplier",
                                              "sample_rate", "steps", "accountant",
                                              "grad_sample_mode")}})
    return entry
