"""Sampling many adapters at once: the cells of one grid job share one pass through the UNet.

The adapters of a (method, set, seed) grid (one per epsilon) share the base UNet and, in the
gauge-fixed parametrisation, the LoRA basis A: only B differs. :func:`sample_adapters` stacks
their B's into :class:`~dpdeepsets.lora.GroupedLoRALayer` s and samples all of them in one
batched DDIM pass from the same starting noise, which equals sampling each adapter alone
(peft-loaded) to float rounding (``tests/unit/test_sampling.py``). Adapters whose A differ
(the ``full`` parametrisation) are sampled group by group.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import lora


def _load(path) -> tuple[dict, dict, float]:
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    a, b = lora.load_adapter_factors(path)
    return a, b, float(cfg["lora_alpha"]) / int(cfg["r"])


def _same(a1: dict, a2: dict) -> bool:
    return a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)


def sample_adapters(unet, scheduler, adapters: list | None, **kw) -> list[np.ndarray]:
    """uint8 NHWC samples of every PEFT adapter directory (``None`` or ``[None]``: the base
    model alone); the keyword arguments are :func:`sample_loras`'."""
    if not adapters or adapters == [None]:
        return sample_loras(unet, scheduler, None, **kw)
    return sample_loras(unet, scheduler, [_load(p) for p in adapters], **kw)


def sample_loras(unet, scheduler, loras: list | None, *, num_samples: int, steps: int,
                 seed: int, batch_size: int, eta: float = 0.0, device="cpu",
                 desc: str = "sample") -> list[np.ndarray]:
    """uint8 NHWC samples of every LoRA ``(A dict, B dict [out, r], scaling)`` (None: the base
    model alone), batched where they share A.

    ``unet`` is modified in place (wrapped layers) and should be a fresh copy of the base
    model. Every LoRA is sampled from the same starting noise (``seed``).
    """
    from .diffusion import ddim_sample, tensor_to_images

    if not loras:
        x = ddim_sample(unet, scheduler, num_samples=num_samples, steps=steps, seed=seed,
                        batch_size=batch_size, eta=eta, device=device, desc=desc)
        return [tensor_to_images(x)]
    loaded = list(loras)
    groups: list[list[int]] = []  # adapters sharing A and scaling
    for i, (a, _, scaling) in enumerate(loaded):
        for g in groups:
            a0, _, s0 = loaded[g[0]]
            if s0 == scaling and _same(a0, a):
                g.append(i)
                break
        else:
            groups.append([i])
    names = sorted(loaded[0][0])
    targets = [t for t in lora.find_targets(unet, [n.replace(".", r"\.") for n in names], 1)]
    out: list[np.ndarray | None] = [None] * len(loaded)
    for g in groups:
        a, _, scaling = loaded[g[0]]
        layers = lora.attach(unet, targets, {k: v.to(device) for k, v in a.items()}, scaling)
        try:
            lora.set_b(layers, {k: torch.stack([loaded[i][1][k] for i in g]).to(device) for k in a})
            # the batch of one pass holds every group's samples: keep the pass's size bounded
            per_pass = max(1, batch_size // len(g))
            x = ddim_sample(unet, scheduler, num_samples=num_samples, steps=steps, seed=seed,
                            batch_size=per_pass, eta=eta, groups=len(g), device=device, desc=desc)
        finally:
            lora.detach(unet, layers)
        images = tensor_to_images(x).reshape(len(g), num_samples, *x.shape[2:], x.shape[1])
        for j, i in enumerate(g):
            out[i] = images[j]
    return out


def write_cells(cells, outs, grids, feature_outs, *, extractor, labeller=None, grid_size: int,
                log=None) -> None:
    """Write every cell's samples (.npz, uint8), its grid (.png) and its features (.npz:
    Inception pool3 features and, with ``labeller``, the public classifier's labels): the
    files every sampled cell has, whichever rule made its samples."""
    from .data import atomic_savez, save_split
    from .figures import save_image_grid

    for images, out, grid, feat_out in zip(cells, outs, grids, feature_outs):
        save_split(out, images, None)
        save_image_grid(grid, images[: grid_size ** 2], ncols=grid_size)
        arrays = {"features": extractor(images)}
        if labeller is not None:
            arrays["labels"] = labeller.predict(images)
        atomic_savez(feat_out, arrays)
        if log is not None:
            log.info("wrote %s, %s and %s", out, grid, feat_out)
