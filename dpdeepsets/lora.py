"""Gauge-fixed LoRA on a diffusers UNet: the two LoRA layers, batched bank fitting, PEFT export.

Identifiability. A LoRA update ``delta W = B A`` is unchanged by ``(B M, M^-1 A)`` for any
invertible ``M``, so regressing (A, B) pairs would ask the hypernetwork to hit one point of
an orbit. We fix the gauge: every target module gets a shared, seeded ``A`` with
orthonormal rows (the *basis*), and only ``B`` is fitted or generated. ``B`` is then a
unique function of ``delta W``.

Two layers, one function. :class:`GroupedLoRALayer` carries ``B`` as a plain tensor with a
leading *group* axis ``[S, out, r]`` (S LoRAs at once: the bank fitter, batched sampling,
the hypernetwork's generated weights). :class:`ModuleLoRALayer` holds A and B as real
``nn.Conv2d`` / ``nn.Linear`` modules (peft's layout), so that opacus computes their
per-sample gradients (the gradient-based fits of :mod:`dpdeepsets.baselines`). With one
group the two compute the same function (tested).

Batching. :class:`GroupedLoRALayer` carries ``B`` with a leading *subset* axis ``[S, out, r]``;
a stacked batch of ``S * b`` examples is split into ``S`` groups of ``b``, and group ``s``
sees only ``B[s]``. One forward/backward pass through the shared frozen base then fits
``S`` independent LoRAs, each with its own parameters and (Adam, element-wise) optimizer
state: the result equals fitting them one at a time.

Export. A fitted or generated ``B`` with its basis ``A`` is written as a PEFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) that
``peft.inject_adapter_in_model`` + ``peft.set_peft_model_state_dict`` load onto the base
UNet; :func:`load_adapter_with_peft` does exactly that (tests check that peft's loading and
:func:`load_adapter_factors` + :class:`GroupedLoRALayer` give the same UNet). Writing the
config needs no peft import (it costs seconds per job): :func:`peft_adapter_config`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .checkpoint import Checkpointer, config_settings, module_digest, tensor_digest
from .io import atomic_dir, atomic_path
from .seeds import derive_seed

log = logging.getLogger(__name__)


class LoRAError(ValueError):
    """Invalid LoRA configuration (bad target pattern, rank too large, ...)."""


@dataclass(frozen=True)
class Target:
    """One LoRA target module: its name in the UNet, kind, and shapes."""

    name: str
    kind: str  # "linear" or "conv"
    out_features: int
    in_features: int
    kernel: tuple[int, int]

    @property
    def fan_in(self) -> int:
        return self.in_features * self.kernel[0] * self.kernel[1]


def find_targets(model: nn.Module, patterns: list[str], rank: int) -> list[Target]:
    """Linear/Conv2d modules whose full name matches one of ``patterns`` (regex fullmatch)."""
    regexes = [re.compile(p) for p in patterns]
    targets = []
    for name, mod in model.named_modules():
        if not any(r.fullmatch(name) for r in regexes):
            continue
        if isinstance(mod, nn.Linear):
            t = Target(name, "linear", mod.out_features, mod.in_features, (1, 1))
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                raise LoRAError(f"lora.target_modules: grouped conv {name} is not supported")
            t = Target(name, "conv", mod.out_channels, mod.in_channels, tuple(mod.kernel_size))
        else:
            continue
        if rank > min(t.out_features, t.fan_in):
            raise LoRAError(f"lora.rank={rank} exceeds the dimensions of target {name} "
                            f"(out={t.out_features}, in={t.fan_in})")
        targets.append(t)
    if not targets:
        raise LoRAError(f"lora.target_modules {patterns} match no Linear/Conv2d module of the base UNet")
    return targets


def make_basis(targets: list[Target], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """The shared gauge-fixing ``A`` per target: seeded, orthonormal rows, PEFT weight shape."""
    gen = torch.Generator().manual_seed(seed)
    basis = {}
    for t in targets:
        g = torch.randn(t.fan_in, rank, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)  # [fan_in, r], orthonormal columns
        a = q.T.contiguous().float()
        basis[t.name] = a if t.kind == "linear" else a.view(rank, t.in_features, *t.kernel)
    return basis


class GroupedLoRALayer(nn.Module):
    """A frozen base Linear/Conv2d plus ``scaling * B[s] (A x)`` for example group ``s``."""

    def __init__(self, base: nn.Module, a: torch.Tensor, scaling: float):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", a, persistent=False)
        self.scaling = scaling
        self.lora_b: torch.Tensor | None = None  # [S, out, r], set by the caller

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        b = self.lora_b
        if b is None:
            return y
        s = b.shape[0]
        n = x.shape[0]
        if n % s:
            raise RuntimeError(f"batch of {n} cannot be split into {s} LoRA groups")
        if isinstance(self.base, nn.Conv2d):
            u = F.conv2d(x, self.lora_a, stride=self.base.stride, padding=self.base.padding,
                         dilation=self.base.dilation)  # [N, r, H, W]
            u = u.reshape(s, n // s, *u.shape[1:])
            d = torch.einsum("sbrhw,sor->sbohw", u, b)
        else:
            u = x @ self.lora_a.T  # [N, ..., r]
            u = u.reshape(s, n // s, *u.shape[1:])
            d = torch.einsum("sb...r,sor->sb...o", u, b)
        return y + self.scaling * d.reshape(y.shape)


class ModuleLoRALayer(nn.Module):
    """A frozen base Linear/Conv2d plus ``scaling * lora_B(lora_A(x))`` with real modules.

    ``lora_A``: Conv2d(in, r, kernel, stride, padding, dilation) or Linear(in, r);
    ``lora_B``: Conv2d(r, out, 1) or Linear(r, out); no biases (peft's layout), so opacus
    sees ordinary layers and computes their per-sample gradients. Same function as
    :class:`GroupedLoRALayer` with one group (tested).
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


def attach_modules(unet: nn.Module, targets: list[Target], a: dict[str, torch.Tensor],
                   b: dict[str, torch.Tensor] | None, *, rank: int, alpha: float,
                   train_a: bool) -> dict[str, ModuleLoRALayer]:
    """Wrap ``unet``'s targets (in place) in :class:`ModuleLoRALayer` s; B = 0 unless given."""
    unet.requires_grad_(False)
    layers = {}
    for t in targets:
        parent, child = _parent(unet, t.name)
        bt = b[t.name] if b is not None else torch.zeros(t.out_features, rank)
        layer = ModuleLoRALayer(getattr(parent, child), a[t.name], bt, alpha / rank, train_a=train_a)
        setattr(parent, child, layer)
        layers[t.name] = layer
    return layers


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def attach(model: nn.Module, targets: list[Target], basis: dict[str, torch.Tensor],
           scaling: float) -> dict[str, GroupedLoRALayer]:
    """Wrap every target module of ``model`` (in place) in a :class:`GroupedLoRALayer`."""
    layers = {}
    for t in targets:
        parent, child = _parent(model, t.name)
        base = getattr(parent, child)
        layer = GroupedLoRALayer(base, basis[t.name], scaling)
        setattr(parent, child, layer)
        layers[t.name] = layer
    return layers


def detach(model: nn.Module, layers: dict[str, GroupedLoRALayer]) -> None:
    """Undo :func:`attach`."""
    for name, layer in layers.items():
        parent, child = _parent(model, name)
        setattr(parent, child, layer.base)


def set_b(layers: dict[str, GroupedLoRALayer], b: dict[str, torch.Tensor] | None) -> None:
    """Install ``B`` tensors ``[S, out, r]`` (or remove them with ``None``)."""
    for name, layer in layers.items():
        layer.lora_b = None if b is None else b[name]


def fit_loras(unet, scheduler, layers: dict[str, GroupedLoRALayer], targets: list[Target],
              subsets: list[torch.Tensor], subset_ids: list[int], *, rank: int, steps: int,
              batch_size: int, lr: float, seed: int, desc: str = "fit_lora",
              device: torch.device | str = "cpu",
              checkpoint: Checkpointer | None = None) -> dict[str, torch.Tensor]:
    """Fit one ``B`` per subset, all subsets in one stacked pass; returns ``{name: [S,out,r]}``.

    Each subset draws its minibatches, timesteps and noise from its own generator seeded by
    ``derive_seed(seed, "lora_bank", subset_id)``, and the summed loss makes ``B[s]``'s gradient that of subset
    ``s`` alone; with Adam's element-wise state the fit is the same as one at a time.
    Random draws come from CPU generators (device-independent); tensors then move to
    ``device`` (the UNet, its LoRA layers and ``subsets`` must already be there).
    With ``checkpoint``, B, the Adam state and every subset's generator are saved every
    ``checkpoint.every`` steps and a matching saved state is resumed from.
    """
    from .diffusion import denoising_loss, draw_noise

    s = len(subsets)
    params = {t.name: torch.zeros(s, t.out_features, rank, device=device, requires_grad=True)
              for t in targets}
    opt = torch.optim.Adam(params.values(), lr=lr)
    gens = [torch.Generator().manual_seed(derive_seed(seed, "lora_bank", int(i))) for i in subset_ids]
    start = 0
    if checkpoint is not None:
        checkpoint.bind("fit_loras", {
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "rank": rank,
            "subset_ids": [int(i) for i in subset_ids], "targets": [repr(t) for t in targets],
            "scaling": sorted({float(layer.scaling) for layer in layers.values()}),
            "basis": tensor_digest(*(layers[t.name].lora_a for t in targets)),
            "scheduler": config_settings(scheduler.config), "unet": module_digest(unet),
            "subsets": tensor_digest(*subsets)})
        state = checkpoint.load()
        if state is not None:
            with torch.no_grad():
                for k, v in params.items():
                    v.copy_(state["b"][k])
            opt.load_state_dict(state["optimizer"])
            for g, g_state in zip(gens, state["generators"]):
                g.set_state(g_state)
            start = state["step"]

    def loop_state():
        return {"b": {k: v.detach().cpu() for k, v in params.items()},
                "optimizer": opt.state_dict(), "generators": [g.get_state() for g in gens]}

    set_b(layers, params)
    t_max = scheduler.config.num_train_timesteps
    try:
        for step in tqdm(range(start, steps), desc=desc, mininterval=5, initial=start, total=steps):
            xs, ts, ns = [], [], []
            for x, g in zip(subsets, gens):
                idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
                x0 = x[idx.to(x.device)]
                t, noise = draw_noise(x0.cpu(), t_max, g)
                xs.append(x0), ts.append(t.to(device)), ns.append(noise.to(device))
            per_example = denoising_loss(unet, scheduler, torch.cat(xs), torch.cat(ts),
                                         torch.cat(ns), reduction="none")
            loss = per_example.view(s, batch_size).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if checkpoint is not None:
                checkpoint.step_done(step, steps, loop_state)
    finally:
        set_b(layers, None)
    return {k: v.detach().cpu() for k, v in params.items()}


# ---------------------------------------------------------------- artifacts

def save_lora_bank(path, b: dict[str, torch.Tensor], basis: dict[str, torch.Tensor],
                   subset_ids, meta: dict) -> None:
    """One file holding ``B`` for many subsets, the shared basis and the subset ids."""
    tensors = {f"B::{k}": v.contiguous() for k, v in b.items()}
    tensors.update({f"A::{k}": v.contiguous() for k, v in basis.items()})
    tensors["subset_ids"] = torch.as_tensor(np.asarray(subset_ids, dtype=np.int64))
    meta = {k: str(v) for k, v in meta.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_lora_bank(path):
    """Inverse of :func:`save_lora_bank`: ``(B dict, basis dict, subset_ids, metadata)``."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    b = {k[3:]: v for k, v in tensors.items() if k.startswith("B::")}
    basis = {k[3:]: v for k, v in tensors.items() if k.startswith("A::")}
    return b, basis, tensors["subset_ids"].numpy(), meta


def save_peft_adapter(path, targets: list[Target], basis: dict[str, torch.Tensor],
                      b: dict[str, torch.Tensor], *, rank: int, alpha: float,
                      extra_meta: dict | None = None) -> None:
    """Write one LoRA (``b[name]`` is ``[out, r]``) as a standard PEFT adapter directory."""
    import json

    state = {}
    for t in targets:
        bt = b[t.name]
        state[f"{t.name}.lora_A.weight"] = basis[t.name].contiguous()
        state[f"{t.name}.lora_B.weight"] = (bt if t.kind == "linear" else bt[..., None, None]).contiguous()
    config = peft_adapter_config(rank, alpha, [t.name for t in targets])
    with atomic_dir(path) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        meta = {"format": "peft-lora", **{k: str(v) for k, v in (extra_meta or {}).items()}}
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata=meta)


def peft_adapter_config(rank: int, alpha: float, target_modules: list[str]) -> dict:
    """The ``adapter_config.json`` of a plain LoRA, as ``peft.LoraConfig.save_pretrained``
    writes it for these settings (peft fills every other key with its default on load)."""
    return {"peft_type": "LORA", "task_type": None, "r": int(rank), "lora_alpha": alpha,
            "target_modules": list(target_modules), "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "init_lora_weights": True, "use_dora": False,
            "use_rslora": False, "modules_to_save": None, "base_model_name_or_path": None,
            "inference_mode": False}


def load_adapter_with_peft(unet: nn.Module, path) -> nn.Module:
    """Load a saved adapter onto ``unet`` (in place) with peft itself; returns ``unet``."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    path = Path(path)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (path / f).exists():
            raise FileNotFoundError(f"adapter file missing: {path / f}")
    config = LoraConfig.from_pretrained(str(path))
    state = load_file(str(path / "adapter_model.safetensors"))
    inject_adapter_in_model(config, unet)
    result = set_peft_model_state_dict(unet, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"adapter {path} has keys the base model lacks: {unexpected[:3]}")
    unet.eval().requires_grad_(False)
    return unet


def load_adapter_factors(path) -> tuple[dict, dict]:
    """(A, B [out, r]) per target from a saved PEFT adapter directory."""
    path = Path(path)
    if not (path / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"adapter file missing: {path / 'adapter_model.safetensors'}")
    state = load_file(str(path / "adapter_model.safetensors"))
    a, b = {}, {}
    for key, v in state.items():
        if key.endswith(".lora_A.weight"):
            a[key[: -len(".lora_A.weight")]] = v
        elif key.endswith(".lora_B.weight"):
            b[key[: -len(".lora_B.weight")]] = v.reshape(v.shape[0], v.shape[1])
    return a, b


def targets_from_bank(basis: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[Target]:
    """Rebuild the target list from a saved basis and its ``B [M, out, r]`` tensors."""
    targets = []
    for name in sorted(basis):
        a, out = basis[name], b[name].shape[1]
        if a.ndim == 2:
            targets.append(Target(name, "linear", out, a.shape[1], (1, 1)))
        else:
            targets.append(Target(name, "conv", out, a.shape[1], tuple(a.shape[2:])))
    return targets
