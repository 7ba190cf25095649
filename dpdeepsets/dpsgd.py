"""Gradient-based LoRA baselines on the private sets: DP-SGD (opacus) and its variants.

One training loop, :func:`train_lora`, for every gradient-based method:

``nonprivate``       LoRA fitted on the private set without clipping or noise (the ceiling;
                     NOT private). Also fits the public LoRA (on the public pool).
``dpsgd``            opacus DP-SGD from the usual LoRA start (B = 0): Poisson sampling,
                     per-sample clipping, Gaussian noise calibrated by
                     ``PrivacyEngine.make_private_with_epsilon`` with the PRV or RDP accountant.
``public_ft_dpsgd``  the same, started from a LoRA fitted non-privately on the public pool.
``pda_dpmd``         public-data-assisted mirror descent (Amid et al. 2022), first-order form:
                     ``theta <- theta - lr [a_t g~_priv + (1 - a_t) grad L_pub(theta)]``,
                     ``a_t = cos(pi t / 2T)``, from the public optimum. ``g~_priv`` is the
                     DP-SGD gradient (clipped, noised, averaged); the public gradient uses
                     public data only and costs no privacy.

LoRA parametrisation (``baselines.parametrisation``):
``gauge_fixed`` the form the hypernetwork emits: the shared seeded orthonormal ``A`` of
                :func:`dpdeepsets.lora.make_basis` is frozen, only ``B`` is trained (fewer
                parameters, so less noise in total);
``full``        ``A`` (initialised at that basis) and ``B`` are both trained.

Noise multiplicity. Each example of a step gets ``K`` independent (timestep, noise) draws;
its gradient is the gradient of its *mean* denoising loss over the ``K`` draws, and that
per-example gradient is what is clipped. The draws do not depend on the data, so this is
free in privacy (the sensitivity of the clipped sum is unchanged). Implementation: the
``B * K`` noised rows go through the UNet as one batch; opacus computes one gradient per
row, and :func:`fold_multiplicity` averages the ``K`` rows of each example before the
optimizer clips (rows are independent: the UNet has no cross-example layers).

Per-sample gradients. The LoRA factors are real ``nn.Conv2d`` / ``nn.Linear`` modules
(:class:`DPLoRALayer`, the layout peft uses), so opacus sees ordinary layers. opacus 1.6's
default ``hooks`` grad sampler for ``nn.Conv2d`` (``opacus.utils.tensor_utils.unfold2d``)
re-strides its input with ``as_strided`` assuming a *contiguous* NCHW layout; diffusers'
attention blocks emit channels_last tensors (``transpose(-1, -2).reshape(...)``), so every
conv fed by an attention block gets silently wrong per-sample gradients (and ``ghost``
clipping shares the same path). The pipeline therefore uses ``grad_sample_mode="functorch"``
(``baselines.grad_sample_mode``), which computes per-sample gradients with ``torch.func``
(exact for any memory layout); ``tests/test_dpsgd.py`` compares it with per-example autograd
on the LoRA-UNet and shows that ``hooks`` fails the same comparison.

Privacy accounting is opacus' own: the noise multiplier comes from
``make_private_with_epsilon`` and the final epsilon from the engine's accountant after the
last step (must be <= the target; :class:`~dpdeepsets.privacy.PrivacyError` otherwise).
opacus certifies *add/remove-one* adjacency under Poisson sampling; the ledger says so.
:func:`dpsgd_ledger_entry` records those numbers; nothing here calibrates noise itself.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import lora as L

log = logging.getLogger(__name__)

METHODS = ("nonprivate", "dpsgd", "public_ft_dpsgd", "pda_dpmd")
DP_METHODS = ("dpsgd", "public_ft_dpsgd", "pda_dpmd")
PUBLIC_START = ("public_ft_dpsgd", "pda_dpmd")
PARAMETRISATIONS = ("gauge_fixed", "full")
EXACT_GRAD_SAMPLE_MODES = ("functorch",)


class DPLoRALayer(nn.Module):
    """A frozen base Linear/Conv2d plus ``scaling * lora_B(lora_A(x))`` (peft's layout).

    ``lora_A``: Conv2d(in, r, kernel, stride, padding, dilation) or Linear(in, r);
    ``lora_B``: Conv2d(r, out, 1) or Linear(r, out); no biases. Same function as
    :class:`dpdeepsets.lora.LoRALayer` with one group (tested).
    """

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float,
                 train_a: bool):
        super().__init__()
        self.base = base
        self.scaling = float(scaling)
        r = a.shape[0]
        if isinstance(base, nn.Conv2d):
            self.lora_A = nn.Conv2d(base.in_channels, r, base.kernel_size, stride=base.stride,
                                    padding=base.padding, dilation=base.dilation, bias=False)
            self.lora_B = nn.Conv2d(r, base.out_channels, 1, bias=False)
        else:
            self.lora_A = nn.Linear(base.in_features, r, bias=False)
            self.lora_B = nn.Linear(r, base.out_features, bias=False)
        dev = base.weight.device
        with torch.no_grad():
            self.lora_A.weight.copy_(a.reshape(self.lora_A.weight.shape))
            self.lora_B.weight.copy_(b.reshape(self.lora_B.weight.shape))
        self.lora_A.to(dev).weight.requires_grad_(train_a)
        self.lora_B.to(dev).weight.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(x))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A in PEFT weight shape, B as [out, r]), detached, on the CPU."""
        b = self.lora_B.weight.detach().cpu()
        return self.lora_A.weight.detach().cpu().clone(), b.reshape(b.shape[0], b.shape[1]).clone()


class LoRAUNet(nn.Module):
    """The frozen UNet with :class:`DPLoRALayer` s; ``forward(x_t, t)`` predicts the noise."""

    def __init__(self, unet: nn.Module, layers: dict[str, DPLoRALayer]):
        super().__init__()
        self.unet = unet
        self.lora_names = list(layers)

    def layers(self) -> dict[str, DPLoRALayer]:
        return {n: self.unet.get_submodule(n) for n in self.lora_names}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample


def build_lora_unet(unet: nn.Module, targets: list[L.Target], init_a: dict[str, torch.Tensor],
                    init_b: dict[str, torch.Tensor] | None, *, rank: int, alpha: float,
                    parametrisation: str) -> LoRAUNet:
    """Wrap ``unet``'s targets (in place) in :class:`DPLoRALayer` s; B = 0 unless given."""
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"baselines.parametrisation must be one of {PARAMETRISATIONS}, "
                         f"got {parametrisation!r}")
    unet.requires_grad_(False)
    layers = {}
    for t in targets:
        parent, child = L._parent(unet, t.name)
        base = getattr(parent, child)
        b = init_b[t.name] if init_b is not None else torch.zeros(t.out_features, rank)
        layer = DPLoRALayer(base, init_a[t.name], b, alpha / rank,
                            train_a=parametrisation == "full")
        setattr(parent, child, layer)
        layers[t.name] = layer
    return LoRAUNet(unet, layers)


def trainable(model: nn.Module) -> list[nn.Parameter]:
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


def row_losses(model: nn.Module, scheduler, x0: torch.Tensor, t: torch.Tensor,
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


# ---------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    privacy: dict | None = None  # accountant numbers (DP methods)


def alpha_schedule(step: int, total: int) -> float:
    """PDA-DPMD weight of the private gradient: ``cos(pi t / 2T)`` (1 at t = 0, -> 0 at T)."""
    return math.cos(math.pi * step / (2 * total))


def train_lora(unet: nn.Module, scheduler, targets: list[L.Target], images: torch.Tensor, *,
               method: str, cfg: dict, rank: int, alpha: float, basis: dict[str, torch.Tensor],
               init: tuple[dict, dict] | None = None, epsilon: float | None = None,
               delta: float | None = None, public_images: torch.Tensor | None = None,
               seed: int = 0, secure: bool = False, alpha_fn=alpha_schedule,
               steps: int | None = None, device: torch.device | str = "cpu",
               desc: str | None = None) -> TrainResult:
    """Fit one LoRA on ``images`` (float NCHW in [-1, 1]) with ``method``; see the module doc.

    ``cfg`` is the ``baselines`` config section. ``init`` = (A, B) to start from (the public
    LoRA for ``public_ft_dpsgd`` / ``pda_dpmd``); else A = ``basis``, B = 0. ``unet`` is
    modified in place (wrapped LoRA layers) and should be a fresh copy of the base model.
    Every random draw is seeded by ``seed`` (Poisson sampling and opacus' noise use
    torch's global generator and a seeded ``noise_generator``; with ``secure`` opacus'
    secure mode is used instead, which needs torchcsprng). ``steps`` overrides the number of
    steps of a non-private fit (default: ``epochs`` passes over ``images``); DP fits always
    make ``epochs`` passes of Poisson-sampled batches (what the accountant is told).
    """
    if method not in METHODS:
        raise ValueError(f"unknown gradient-based method {method!r} (one of {METHODS})")
    dp = method in DP_METHODS
    if dp and not (epsilon is not None and math.isfinite(epsilon) and epsilon > 0 and delta):
        raise ValueError(f"{method} needs a finite epsilon > 0 and a delta, got {epsilon}, {delta}")
    if method in PUBLIC_START and init is None:
        raise ValueError(f"{method} starts from the public LoRA: pass init=(A, B)")
    if method == "pda_dpmd" and public_images is None:
        raise ValueError("pda_dpmd needs public_images for the public gradient")
    mode = cfg["grad_sample_mode"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    pub_gen = torch.Generator().manual_seed(seed * 1_000_003 + 29)
    a0, b0 = init if init is not None else (basis, None)
    model = build_lora_unet(unet, targets, a0, b0, rank=rank, alpha=alpha,
                            parametrisation=cfg["parametrisation"]).to(device)
    model.train()
    params = trainable(model)
    opt = (torch.optim.Adam(params, lr=cfg["lr"]) if cfg["optimizer"] == "adam"
           else torch.optim.SGD(params, lr=cfg["lr"]))
    n = images.shape[0]
    bs = min(cfg["batch_size"], n)
    k = cfg["noise_multiplicity"]
    shape = tuple(images.shape[1:])
    t_max = scheduler.config.num_train_timesteps
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images.cpu()),
                                         batch_size=bs, shuffle=not dp,
                                         generator=torch.Generator().manual_seed(seed))
    epochs = cfg["epochs"]
    engine = None
    info = None
    if dp:
        from opacus import PrivacyEngine

        if mode not in EXACT_GRAD_SAMPLE_MODES:
            log.warning("grad_sample_mode=%r is NOT exact for convs fed channels_last tensors "
                        "(diffusers attention outputs); per-sample gradients may be wrong", mode)
        engine = PrivacyEngine(accountant=cfg["accountant"], secure_mode=secure)
        noise_gen = None if secure else torch.Generator(device=device).manual_seed(seed * 7 + 3)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
            warnings.filterwarnings("ignore", message=".*[Oo]ptimal order.*")
            model, opt, loader = engine.make_private_with_epsilon(
                module=model, optimizer=opt, data_loader=loader, target_epsilon=float(epsilon),
                target_delta=float(delta), epochs=epochs, max_grad_norm=cfg["max_grad_norm"],
                poisson_sampling=True, loss_reduction="mean", grad_sample_mode=mode,
                noise_generator=noise_gen)
        info = {"noise_multiplier": float(opt.noise_multiplier),
                "sample_rate": 1.0 / len(loader), "expected_batch_size": opt.expected_batch_size}
        log.info("%s: opacus %s accountant, target (%g, %g): noise multiplier %.4f, sample "
                 "rate %.4f, %d epochs", method, cfg["accountant"], epsilon, delta,
                 info["noise_multiplier"], info["sample_rate"], epochs)
    total = epochs * len(loader) if (dp or steps is None) else int(steps)
    losses = []
    step = 0
    warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook is firing.*")
    bar = tqdm(total=total, desc=desc or method, mininterval=5)
    for x0 in _batches(loader, total, dp):
        x0 = x0.to(device)
        g_pub = None
        if method == "pda_dpmd":
            g_pub = _public_gradient(model, scheduler, public_images, cfg, pub_gen,
                                     shape, t_max, device)
        empty = x0.shape[0] == 0
        if empty:  # an empty Poisson batch: a zero-weight dummy row, the step adds noise only
            x0 = torch.zeros((1, *shape), device=device)
        b = x0.shape[0]
        t, noise = draw_multiplicity(b, k, shape, t_max, gen)
        rows = row_losses(model, scheduler, x0, t.to(device), noise.to(device))
        loss = rows.mean() * (0.0 if empty else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dp:
            fold_multiplicity(params, b, k)
            if not opt.pre_step():  # clip, noise, scale, account (one step)
                raise RuntimeError("opacus skipped a step (virtual steps are not used here)")
            if g_pub is not None:
                a_t = float(alpha_fn(step, total))
                for p, gp in zip(params, g_pub):
                    p.grad.mul_(a_t).add_(gp, alpha=1.0 - a_t)
            opt.original_optimizer.step()
        else:
            opt.step()
        if not empty:
            losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % 20 == 0 or step == total:
            recent = losses[-20:]
            log.info("step %d/%d loss %.4f", step, total, sum(recent) / max(1, len(recent)))
    bar.close()
    inner = model._module if hasattr(model, "_module") else model
    if dp:
        opt.zero_grad(set_to_none=True)
        spent = float(engine.get_epsilon(float(delta)))
        rates = {float(h[1]) for h in engine.accountant.history}
        info.update({"accounted_epsilon": spent, "steps": _steps(engine),
                     "sample_rate": rates.pop() if len(rates) == 1 else math.nan,
                     "accountant": cfg["accountant"], "grad_sample_mode": mode})
        if info["steps"] != total:
            raise RuntimeError(f"accountant saw {info['steps']} steps, the loop made {total}")
        from .privacy import PrivacyError

        if spent > float(epsilon) * (1 + 1e-6):
            raise PrivacyError(f"DP-SGD accountant reports epsilon {spent} > target {epsilon}")
        log.info("%s: accounted epsilon %.4f <= target %g after %d steps", method, spent,
                 epsilon, total)
        if hasattr(model, "_close"):
            model._close()
    a, b = export_factors(inner)
    return TrainResult(a=a, b=b, losses=losses, privacy=info)


def _batches(loader, total: int, dp: bool):
    """``total`` batches, epoch after epoch (DP: Poisson batches, one epoch = len(loader) steps)."""
    done = 0
    if len(loader) == 0:
        raise RuntimeError("empty data loader")
    while done < total:
        for (x0,) in loader:
            yield x0
            done += 1
            if done == total:
                return


def _steps(engine) -> int:
    """Steps recorded by an opacus accountant (history = [(noise, sample_rate, steps), ...])."""
    return int(sum(h[2] for h in engine.accountant.history))


def _public_gradient(model, scheduler, public_images, cfg, gen, shape, t_max, device):
    """Gradient of the public denoising loss at the current LoRA (public data only, no hooks)."""
    inner = model._module if hasattr(model, "_module") else model
    params = trainable(inner)
    idx = torch.randint(0, public_images.shape[0], (cfg["pda_public_batch_size"],), generator=gen)
    x0 = public_images[idx].to(device)
    t, noise = draw_multiplicity(x0.shape[0], cfg["noise_multiplicity"], shape, t_max, gen)
    disable = getattr(model, "disable_hooks", None)
    if disable is not None:
        model.disable_hooks()
    try:
        loss = row_losses(inner, scheduler, x0, t.to(device), noise.to(device)).mean()
        grads = torch.autograd.grad(loss, params)
    finally:
        if disable is not None:
            model.enable_hooks()
    return [g.detach() for g in grads]


# ---------------------------------------------------------------- ledger

def dpsgd_ledger_entry(*, method: str, pset: str, seed: int, epsilon: float, delta: float,
                       n: int, dim: int, cfg: dict, privacy: dict | None,
                       noise_source: str) -> dict:
    """A privacy-ledger entry (keys of :func:`dpdeepsets.report.ledger_table`).

    DP methods: the numbers of opacus' accountant (noise multiplier as ``sigma``, the clip
    norm as ``sensitivity``, the epsilon it accounted after the last step, sampling rate,
    steps). ``nonprivate``: a non-private reference row (epsilon = inf).
    """
    entry = {"pset": pset, "seed": int(seed), "method": method, "n": int(n), "dim": int(dim),
             "clip_norm": float(cfg["max_grad_norm"]), "noise_source": noise_source,
             "parametrisation": cfg["parametrisation"],
             "noise_multiplicity": int(cfg["noise_multiplicity"]), "epochs": int(cfg["epochs"])}
    if privacy is None:
        entry.update({"epsilon": math.inf, "delta": 0.0, "sigma": 0.0, "sensitivity": math.nan,
                      "adjacency": "none", "private": False,
                      "mechanism": "none (non-private reference, epsilon=inf)",
                      "accounted_epsilon": math.inf, "noise_multiplier": 0.0,
                      "sample_rate": math.nan, "steps": 0})
        return entry
    entry.update({"epsilon": float(epsilon), "delta": float(delta),
                  "sigma": privacy["noise_multiplier"], "sensitivity": float(cfg["max_grad_norm"]),
                  "adjacency": "add_remove (Poisson sampling)", "private": True,
                  "mechanism": f"dp-sgd (opacus, {privacy['accountant']})",
                  "accounted_epsilon": privacy["accounted_epsilon"],
                  "noise_multiplier": privacy["noise_multiplier"],
                  "sample_rate": privacy["sample_rate"], "steps": privacy["steps"],
                  "grad_sample_mode": privacy["grad_sample_mode"]})
    return entry


def load_adapter_factors(path) -> tuple[dict, dict]:
    """(A, B [out, r]) per target from a saved PEFT adapter directory (the public LoRA)."""
    from pathlib import Path

    from safetensors.torch import load_file

    state = load_file(str(Path(path) / "adapter_model.safetensors"))
    a, b = {}, {}
    for key, v in state.items():
        if key.endswith(".lora_A.weight"):
            a[key[: -len(".lora_A.weight")]] = v
        elif key.endswith(".lora_B.weight"):
            b[key[: -len(".lora_B.weight")]] = v.reshape(v.shape[0], v.shape[1])
    return a, b
