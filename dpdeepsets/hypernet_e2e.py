"""End-to-end training of the hypernetwork through the frozen UNet, and its public validation.

The regression objective (:func:`dpdeepsets.hypernet.train_hypernet`) asks the network to
reproduce the LoRAs fitted to a bank of M public subsets: with M in the tens it can hardly do
more than pick and blend bank entries, which is what the ablation nearest_public_lora does
without it. :func:`train_end_to_end` trains it on what a LoRA is for: the denoising loss of a
set's own images through the frozen base UNet carrying the LoRA the network generates for that
set (a :class:`~dpdeepsets.lora.GroupedLoRALayer` holds one generated LoRA per set of the
batch, and gradients flow through B into the network). The sets are public k-NN sets drawn
on the fly around any public anchor, so no LoRA is fitted per set, and each is seen as the
release will show it: its clipped mean embedding (sum / n) plus Gaussian noise of a sigma
drawn from the release sigmas of the epsilon grid (and 0), with sigma given to the network.

:func:`validate` scores the same denoising loss on the proxy sets of the held-out public
validation pool (never trained on), for the generated LoRA, the nearest public LoRA, the mean
public LoRA and the base model, at every epsilon: the levers of the hypernetwork (more bank
subsets, this objective, the embedder, capacity) are chosen on it, at no privacy cost.
Everything here reads public data only.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from . import lora as L
from .diffusion import denoising_loss, draw_noise
from .seeds import derive_seed

log = logging.getLogger(__name__)


def knn_sets(embeddings: np.ndarray, *, anchors: int, k: int, seed: int,
             chunk: int = 256) -> np.ndarray:
    """``[anchors, k]`` member lists: the k nearest rows (Euclidean) of seeded random anchors.

    Computed in chunks of anchors (memory ``chunk x N``), so a large public pool works too.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if k > n:
        raise ValueError(f"sets of {k} need a pool of at least {k} rows, got {n}")
    rng = np.random.default_rng(seed)
    centres = rng.choice(n, size=min(anchors, n), replace=False)
    sq = (x ** 2).sum(1)
    out = np.empty((len(centres), k), dtype=np.int64)
    for lo in range(0, len(centres), chunk):
        c = centres[lo:lo + chunk]
        d2 = sq[c, None] + sq[None, :] - 2.0 * x[c] @ x.T
        d2[np.arange(len(c)), c] = -np.inf
        out[lo:lo + len(c)] = np.argpartition(d2, k - 1, axis=1)[:, :k]
    return out


def set_statistics(clipped: np.ndarray, members: np.ndarray) -> torch.Tensor:
    """The release's statistic of each set: clipped sum / n (n = the set size), ``[sets, d]``."""
    return torch.as_tensor(clipped[members].mean(axis=1), dtype=torch.float32)


def train_end_to_end(net, unet, scheduler, layers: dict, images: torch.Tensor, clipped: np.ndarray,
                     members: np.ndarray, sigmas: list[float], *, steps: int, sets_per_step: int,
                     images_per_set: int, lr: float, seed: int) -> list[float]:
    """Train ``net`` on the denoising loss of public sets (see the module docstring).

    ``layers``: the base UNet's targets wrapped by :func:`dpdeepsets.lora.attach` (the shared
    basis A); ``images``: the public pool, float NCHW in [-1, 1]; ``clipped``: its embeddings
    clipped to C; ``members``: candidate sets (:func:`knn_sets`). Returns the loss curve.
    """
    gen = torch.Generator().manual_seed(seed)
    z_all = set_statistics(clipped, members)
    sig = torch.as_tensor(sigmas, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    t_max = scheduler.config.num_train_timesteps
    k = members.shape[1]
    net.train()
    curve = []
    bar = tqdm(range(steps), desc="hypernet end-to-end", mininterval=5)
    for step in bar:
        pick = torch.randint(0, len(members), (sets_per_step,), generator=gen)
        sigma = sig[torch.randint(0, len(sig), (sets_per_step,), generator=gen)]
        z = z_all[pick] + sigma[:, None] * torch.randn(sets_per_step, z_all.shape[1], generator=gen)
        rows = torch.randint(0, k, (sets_per_step, images_per_set), generator=gen)
        idx = torch.as_tensor(members[pick.numpy()])[torch.arange(sets_per_step)[:, None], rows]
        x0 = images[idx.reshape(-1)]
        t, noise = draw_noise(x0, t_max, gen)
        L.set_b(layers, net(z, sigma))
        try:
            loss = denoising_loss(unet, scheduler, x0, t, noise)
        finally:
            L.set_b(layers, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        curve.append(float(loss))
        if step % 50 == 0 or step == steps - 1:
            recent = float(np.mean(curve[-50:]))
            bar.set_postfix(loss=f"{recent:.4f}")
            log.info("end-to-end step %d/%d denoising loss %.4f", step + 1, steps, recent)
    net.eval()
    return curve


@torch.no_grad()
def validate(net, unet, scheduler, layers: dict, bank: dict, bank_means: np.ndarray,
             sets: list[torch.Tensor], set_means: np.ndarray, sigmas: dict[float, float], *,
             draws: int, seed: int) -> list[dict]:
    """Denoising loss on each held-out proxy set of: the generated LoRA (dpdeepsets), the
    nearest public LoRA and the mean public LoRA (from the same noisy statistic), the base
    model (B = 0), at every epsilon of ``sigmas`` (epsilon -> release sigma).

    The noise is public (a seeded generator: the proxy sets are public), the diffusion draws
    are the same for every candidate (common random numbers). Returns one row per
    (proxy set, epsilon, method).
    """
    rows = []
    t_max = scheduler.config.num_train_timesteps
    mean_b = {k: v.mean(0) for k, v in bank.items()}
    zero_b = {k: torch.zeros_like(v) for k, v in mean_b.items()}
    for q, (x, zq) in enumerate(zip(sets, set_means)):
        gen = torch.Generator().manual_seed(derive_seed(seed, "proxy", q))
        x0 = x.repeat(draws, 1, 1, 1)
        t, noise = draw_noise(x0, t_max, gen)
        cands = []
        for eps, sigma in sigmas.items():
            z = torch.as_tensor(zq, dtype=torch.float32) + sigma * torch.randn(len(zq), generator=gen)
            gen_b = {k: v[0] for k, v in net(z[None], torch.tensor([float(sigma)])).items()}
            m = int(np.argmin(((bank_means - z.numpy().astype(np.float64)) ** 2).sum(1)))
            cands += [(eps, "dpdeepsets", gen_b), (eps, "nearest_public_lora", {k: v[m] for k, v in bank.items()})]
        cands += [(0.0, "mean_public_lora", mean_b), (0.0, "base", zero_b)]
        for eps, name, b in cands:
            L.set_b(layers, {k: v[None] for k, v in b.items()})
            try:
                loss = float(denoising_loss(unet, scheduler, x0, t, noise))
            finally:
                L.set_b(layers, None)
            rows.append({"proxy": f"q{q}", "epsilon": eps, "method": name, "loss": loss})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean validation loss per (method, epsilon) and the gain over the base model (%)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    base = df[df.method == "base"].set_index("proxy").loss
    df["gain_over_base_pct"] = 100 * (1 - df.loss / df.proxy.map(base))
    table = df.groupby(["method", "epsilon"])[["loss", "gain_over_base_pct"]].mean().reset_index()
    return {"rows": rows, "table": table.to_dict("records")}
