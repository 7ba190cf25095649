"""Adapters made without training on private data (registry producer "generate").

Each generator maps (a DP-DeepSets release or nothing, the public side) to one LoRA ``B``
per target module. A release is the only private input, and everything here is
post-processing of it:

``hypernet``        the DeepSets hypernetwork (dpdeepsets): B = rho(noisy mean, sigma);
``nearest_public``  the ablation nearest_public_lora: the bank LoRA of the public subset whose
                    clipped mean embedding (the release's own statistic, noise-free: public)
                    is nearest to the noisy release;
``mean_public``     the ablation mean_public_lora: the average B of the bank (public only).

A method of the registry names its generator in ``GENERATORS`` below (by method name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PublicSide:
    """What a generator may read: public artifacts only."""

    targets: list
    basis: dict[str, torch.Tensor]
    rank: int
    alpha: float
    bank: dict[str, torch.Tensor] | None = None  # B [M, out, r]
    subset_means: np.ndarray | None = None  # [M, d]: each public subset's clipped mean
    hypernet: torch.nn.Module | None = None


def hypernet(release: dict, public: PublicSide) -> tuple[dict, dict]:
    z = torch.tensor([release["noisy_embedding"]], dtype=torch.float32)
    if z.shape[1] != public.hypernet.emb_dim:
        raise ValueError(f"the release has {z.shape[1]} dims, the hypernetwork expects "
                         f"{public.hypernet.emb_dim}")
    sigma = torch.tensor([float(release["ledger"]["sigma"])])
    with torch.no_grad():
        return {k: v[0] for k, v in public.hypernet(z, sigma).items()}, {}


def nearest_public(release: dict, public: PublicSide) -> tuple[dict, dict]:
    z = np.asarray(release["noisy_embedding"], dtype=np.float64)
    if z.shape[0] != public.subset_means.shape[1]:
        raise ValueError(f"the release has {z.shape[0]} dims, the public subsets' means "
                         f"{public.subset_means.shape[1]}")
    m = int(np.argmin(((public.subset_means - z) ** 2).sum(1)))
    return {k: v[m] for k, v in public.bank.items()}, {"nearest_public_subset": m}


def mean_public(release: dict | None, public: PublicSide) -> tuple[dict, dict]:
    return {k: v.mean(0) for k, v in public.bank.items()}, {}


GENERATORS = {"dpdeepsets": hypernet, "nearest_public_lora": nearest_public,
              "mean_public_lora": mean_public}


def subset_means(embeddings: np.ndarray, members: np.ndarray, clip_norm: float) -> np.ndarray:
    """Each public subset's clipped mean embedding: the release's statistic without noise.

    The public subsets all have n = k rows, so the clipped sum / n of the release
    (:func:`dpdeepsets.privacy.clipped_mean_statistic`) is their plain clipped mean.
    """
    from .privacy import clip_rows

    clipped = clip_rows(np.asarray(embeddings), clip_norm)
    return clipped[members].mean(axis=1)
