"""The DP-DeepSets hypernetwork: (noisy clipped-mean embedding, sigma) -> LoRA ``B`` per module.

DeepSets form: a set of embeddings is summarised by the mean of its rows clipped to L2
norm C (``phi`` = clipping; the same clipping :mod:`dpdeepsets.privacy` applies at release
time), and ``rho`` is this network. ``rho`` embeds the noisy mean and the noise level
sigma into one context vector, adds it to one learned token per LoRA target module, runs a
small transformer over the module tokens (so modules can coordinate), and reads each
token out into that module's ``B [out, r]``.

Outputs are parametrised around the average public LoRA: ``B = mean_B + std_B * head``.
At large sigma the mean-squared-error optimum is the conditional mean of the targets,
which is the average public LoRA; the network degrades there, not to garbage.

The network is trained on public data only (:func:`train_hypernet`); it is then fixed and
is public. Everything it does to a released noisy embedding is post-processing.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import Checkpointer, module_digest, tensor_digest
from .lora import Target

log = logging.getLogger(__name__)


def sigma_feature(sigma: torch.Tensor, dim: int, clip_norm: float) -> torch.Tensor:
    """Noise level as the network sees it: log(1 + expected noise norm / clip norm)."""
    return torch.log1p(sigma * math.sqrt(dim) / clip_norm)[..., None]


class HyperNet(nn.Module):
    """rho of the DeepSets hypernetwork; one output ``[batch, out, r]`` per target module."""

    def __init__(self, emb_dim: int, targets: list[Target], rank: int, *, clip_norm: float,
                 d_model: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.emb_dim, self.rank, self.clip_norm = emb_dim, rank, clip_norm
        self.names = [t.name for t in targets]
        self.out_features = [t.out_features for t in targets]
        self.context = nn.Sequential(
            nn.Linear(emb_dim + 1, d_model), nn.GELU(), nn.Linear(d_model, d_model), nn.GELU(),
            nn.Linear(d_model, d_model))
        self.module_tokens = nn.Parameter(torch.randn(len(targets), d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.heads = nn.ModuleList(nn.Linear(d_model, o * rank) for o in self.out_features)
        for h in self.heads:  # start at the average public LoRA
            nn.init.zeros_(h.weight), nn.init.zeros_(h.bias)
        for name, o in zip(self.names, self.out_features):
            self.register_buffer(f"mean_{self._key(name)}", torch.zeros(o, rank))
            self.register_buffer(f"std_{self._key(name)}", torch.ones(1))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    def set_target_stats(self, bank: dict[str, torch.Tensor]) -> None:
        """Centre/scale of each module's targets, from the public LoRA bank ``[M, out, r]``."""
        for name in self.names:
            b = bank[name].float()
            getattr(self, f"mean_{self._key(name)}").copy_(b.mean(0))
            getattr(self, f"std_{self._key(name)}").fill_(float((b - b.mean(0)).std()) + 1e-8)

    def forward_normalised(self, z: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        """Per-module outputs in normalised units (what the loss compares)."""
        ctx = self.context(torch.cat([z, sigma_feature(sigma, self.emb_dim, self.clip_norm)], -1))
        tokens = self.module_tokens[None] + ctx[:, None, :]
        h = self.norm(self.decoder(tokens))
        return [head(h[:, i]).view(-1, o, self.rank)
                for i, (head, o) in enumerate(zip(self.heads, self.out_features))]

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` [batch, d] noisy clipped means, ``sigma`` [batch] their noise std -> B dict."""
        outs = self.forward_normalised(z, sigma)
        return {name: getattr(self, f"mean_{self._key(name)}")
                + getattr(self, f"std_{self._key(name)}") * o
                for name, o in zip(self.names, outs)}

    def normalise(self, bank: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [(bank[n] - getattr(self, f"mean_{self._key(n)}")) / getattr(self, f"std_{self._key(n)}")
                for n in self.names]


def train_hypernet(net: HyperNet, clipped_embeddings: np.ndarray, members: np.ndarray,
                   bank: dict[str, torch.Tensor], train_sigmas: list[float], *, steps: int,
                   batch_size: int, lr: float, weight_decay: float, subsample_fraction: float,
                   seed: int, checkpoint: Checkpointer | None = None) -> list[float]:
    """Noise-aware regression of the public LoRA bank; returns the loss curve.

    ``clipped_embeddings`` are public embeddings already clipped to C (by the privacy
    module's ``clip_rows``), ``members[m]`` the rows of public subset m, ``bank[name][m]``
    the LoRA fitted to subset m. Every step draws subsets, a random sub-bag of each subset
    (so the net sees the sampling spread of a mean, not one fixed point), a sigma from
    ``train_sigmas`` (the release sigmas of the epsilon grid, and 0), and Gaussian noise of
    that sigma, exactly as the release will add it. With ``checkpoint``, the net, optimizer,
    schedule, generator and loss curve are saved every ``checkpoint.every`` steps and a
    matching saved state is resumed from.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    emb = torch.as_tensor(clipped_embeddings, dtype=torch.float32)
    members = torch.as_tensor(members, dtype=torch.long)
    m, k = members.shape
    targets = net.normalise(bank)
    sigmas = torch.as_tensor(train_sigmas, dtype=torch.float32)
    bag = max(2, int(round(subsample_fraction * k)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    start, curve = 0, []
    if checkpoint is not None:
        checkpoint.bind("train_hypernet", {
            "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "subsample_fraction": subsample_fraction, "seed": seed,
            "sigmas": tensor_digest(sigmas), "embeddings": tensor_digest(emb, members),
            "bank": tensor_digest(*(bank[n] for n in net.names)), "init": module_digest(net)})
        state = checkpoint.load()
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["lr_schedule"])
            gen.set_state(state["generator"])
            start, curve = state["step"], list(state["curve"])

    def loop_state():
        return {"model": net.state_dict(), "optimizer": opt.state_dict(),
                "lr_schedule": sched.state_dict(), "generator": gen.get_state(), "curve": curve}

    bar = tqdm(range(start, steps), desc="train_hypernet", mininterval=5, initial=start,
               total=steps)
    for step in bar:
        idx = torch.randint(0, m, (batch_size,), generator=gen)
        pick = torch.rand(batch_size, k, generator=gen).argsort(1)[:, :bag]
        rows = members[idx].gather(1, pick)
        z = emb[rows].mean(1)
        sigma = sigmas[torch.randint(0, len(sigmas), (batch_size,), generator=gen)]
        z_noisy = z + sigma[:, None] * torch.randn(z.shape, generator=gen)
        preds = net.forward_normalised(z_noisy, sigma)
        loss = sum(((p - t[idx]) ** 2).mean() for p, t in zip(preds, targets)) / len(preds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            recent = float(np.mean(curve[-200:]))
            bar.set_postfix(loss=f"{recent:.4f}")
            log.info("step %d/%d loss %.4f", step + 1, steps, recent)
        if checkpoint is not None:
            checkpoint.step_done(step, steps, loop_state)
    return curve


def save_hypernet(path, net: HyperNet, targets: list[Target], basis: dict[str, torch.Tensor],
                  hparams: dict, meta: dict) -> None:
    """Checkpoint with everything needed to rebuild the net and emit adapters."""
    from dataclasses import asdict

    from .io import atomic_path

    payload = {"state_dict": net.state_dict(), "targets": [asdict(t) for t in targets],
               "basis": basis, "hparams": hparams, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_hypernet(path) -> tuple[HyperNet, list[Target], dict[str, torch.Tensor], dict]:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    targets = [Target(**{**t, "kernel": tuple(t["kernel"])}) for t in payload["targets"]]
    hp = payload["hparams"]
    net = HyperNet(hp["emb_dim"], targets, hp["rank"], clip_norm=hp["clip_norm"],
                   d_model=hp["d_model"], layers=hp["layers"], heads=hp["heads"])
    net.load_state_dict(payload["state_dict"])
    net.eval().requires_grad_(False)
    return net, targets, payload["basis"], payload["meta"]
