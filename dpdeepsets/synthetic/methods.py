"""The private estimators: DP-DeepSets (public side + one release), DP-SGD, subspace DP-SGD, tuning."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import privacy
from ..hypernet import HyperNet, train_hypernet
from ..lora import Target
from ..noise import NoiseSource
from .tasks import TaskFamily, excess_risk, least_squares, training_seed

log = logging.getLogger(__name__)

# identity fields -> the NoiseSource of that cell (experiment.noise_factory makes one)
NoiseFor = Callable[..., NoiseSource]


# --------------------------------------------------------------------------
# DP-DeepSets
# --------------------------------------------------------------------------
def embed(x: np.ndarray, y: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Per-example embedding ``phi(x, y) = y P^T x`` (d-dim); E[phi] = P^T w for x ~ N(0, I)."""
    return (x @ proj) * y[:, None]


def public_projection(bank: np.ndarray, proj_dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Top right-singular directions of the public bank ``[M, D]`` (uncentred PCA).

    ``proj_dim=None`` picks d at the largest ratio of consecutive eigenvalues (eigengap)
    among the first ``min(M, D) - 1``. Public information only. Returns (P [D, d],
    eigenvalues of the bank's second-moment matrix).
    """
    _, s, vt = np.linalg.svd(bank, full_matrices=False)
    eig = s ** 2 / len(bank)
    if proj_dim is None:
        top = max(1, len(eig) - 1)
        ratios = eig[:top] / np.maximum(eig[1:top + 1], 1e-300)
        proj_dim = int(np.argmax(ratios)) + 1
    if not 1 <= proj_dim <= len(eig):
        raise ValueError(f"synthetic.proj_dim must be in [1, min(M, D)={len(eig)}], got {proj_dim}")
    return vt[:proj_dim].T.copy(), eig


def release_sigmas(epsilons, delta: float, n: int, clip_norm: float, adjacency: str) -> dict:
    """epsilon -> the release's sigma, from :mod:`dpdeepsets.privacy` (public numbers only)."""
    sens = privacy.clipped_mean_sensitivity(n, clip_norm, adjacency)
    return {float(e): privacy.analytic_gaussian_sigma(float(e), delta, sens) for e in epsilons}


@dataclass
class PublicModel:
    """Everything learned from public tasks (no private data, no basis): DP-DeepSets' side,
    and the projection ``proj`` that subspace DP-SGD shares with it."""

    dim: int
    proj: np.ndarray  # [D, d]
    eigenvalues: np.ndarray
    clip_norm: float
    net: HyperNet
    train_sigmas: dict  # epsilon -> sigma (plus 0.0 -> 0.0)
    bank: np.ndarray  # [M, D] public least-squares solutions, projected on span(proj)
    loss_first: float
    loss_last: float

    @property
    def proj_dim(self) -> int:
        return self.proj.shape[1]


def fit_public(family: TaskFamily, cfg: dict, epsilons) -> PublicModel:
    """Public side of DP-DeepSets for one dimension (bank, projection, clip, hypernetwork).

    ``cfg`` is the ``synthetic`` config section; ``epsilons`` the release epsilons the
    hypernetwork must handle (their sigmas, and 0, are its training noise levels).
    Public data only, so its training randomness is seeded (``hypernet.seed``).
    """
    n, n_pub, m_tasks = cfg["n"], cfg["public_examples"], cfg["num_public_tasks"]
    if n_pub < n:
        raise ValueError(f"synthetic.public_examples ({n_pub}) must be >= synthetic.n ({n}): "
                         "the hypernetwork is trained on public means of n examples")
    bank = np.stack([least_squares(*family.public_task(m, n_pub)[:2]) for m in range(m_tasks)])
    proj, eig = public_projection(bank, cfg["proj_dim"])
    d = proj.shape[1]
    # The regression targets: public LS solutions projected onto the public subspace. The
    # discarded part is LS noise (about noise_std^2 (D - d) / public_examples per task),
    # which a hypernetwork trained on 200 tasks would otherwise partly memorise and replay.
    bank = bank @ proj @ proj.T
    # Second pass (tasks are regenerated from their seeds): projected per-example embeddings.
    emb = np.concatenate([embed(*family.public_task(m, n_pub)[:2], proj) for m in range(m_tasks)])
    clip = float(np.quantile(np.linalg.norm(emb, axis=1), cfg["clip_quantile"]))
    emb = privacy.clip_rows(emb, clip)
    members = np.arange(m_tasks * n_pub).reshape(m_tasks, n_pub)
    sig = release_sigmas(epsilons, cfg["delta"], n, clip, cfg["adjacency"])
    train_sigmas = {0.0: 0.0, **sig}
    h = cfg["hypernet"]
    target = Target(name="w", kind="linear", out_features=family.dim, in_features=1, kernel=(1, 1))
    torch.manual_seed(training_seed(h["seed"], family.dim))
    net = HyperNet(d, [target], 1, clip_norm=clip, d_model=h["d_model"], layers=h["layers"],
                   heads=h["heads"])
    bank_t = {"w": torch.as_tensor(bank, dtype=torch.float32)[:, :, None]}
    net.set_target_stats(bank_t)
    curve = train_hypernet(net, emb, members, bank_t, list(train_sigmas.values()),
                           steps=h["steps"], batch_size=h["batch_size"], lr=h["lr"],
                           weight_decay=h["weight_decay"], subsample_fraction=n / n_pub,
                           seed=training_seed(h["seed"], family.dim))
    net.eval().requires_grad_(False)
    w0 = max(1, min(50, len(curve) // 4))
    model = PublicModel(family.dim, proj, eig, clip, net, train_sigmas, bank,
                        float(np.mean(curve[:w0])), float(np.mean(curve[-w0:])))
    log.info("D=%d: public d=%d (eigenvalues %s), clip %.3g, hypernet loss %.4f -> %.4f",
             family.dim, d, np.array2string(eig[:d + 2], precision=3), clip, model.loss_first,
             model.loss_last)
    return model


def dpdeepsets_fit(public: PublicModel, x: np.ndarray, y: np.ndarray, *, epsilon: float,
                   delta: float, adjacency: str, n: int, noise: NoiseSource):
    """ONE Gaussian release of the clipped mean embedding, then the hypernetwork.

    ``n`` is the public set size (``synthetic.n``): the clipped sum is divided by it, not by
    the row count. ``noise`` is the cell's secret source (keyed or secure). Returns
    (w_hat [D], ledger of :func:`dpdeepsets.privacy.release_clipped_mean`).
    """
    z, ledger = privacy.release_clipped_mean(
        embed(x, y, public.proj), epsilon=epsilon, delta=delta, clip_norm=public.clip_norm,
        adjacency=adjacency, n=n, noise=noise)
    with torch.no_grad():
        out = public.net(torch.as_tensor(z, dtype=torch.float32)[None],
                         torch.tensor([ledger["sigma"]], dtype=torch.float32))["w"]
    return out[0, :, 0].double().numpy(), ledger


# --------------------------------------------------------------------------
# DP-SGD (opacus)
# --------------------------------------------------------------------------
class _BatchTensors(torch.utils.data.Dataset):
    """A TensorDataset that is indexed a whole batch at a time (torch's ``__getitems__``).

    With ``collate_fn=_as_is`` a (Poisson) batch of indices becomes ``(x[idx], y[idx])``
    in one indexing operation instead of one Python call per example: the same batches,
    about 5x faster DP-SGD runs on this tiny model.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _as_is(batch):
    return batch


@functools.lru_cache(maxsize=None)
def _epsilon_spent(z: float, q: float, steps: int, delta: float, accountant: str) -> float:
    # identical (z, q, T) in every run of a cell: ask the privacy module once
    return privacy.dpsgd_epsilon(z, q, steps, delta, accountant)


def dpsgd_fit(x: np.ndarray, y: np.ndarray, *, epsilon: float, delta: float, clip_norm: float,
              lr: float, epochs: int, batch_size: int, accountant: str, noise: NoiseSource,
              check_epsilon: bool = True):
    """Opacus DP-SGD on ``nn.Linear(D, 1, bias=False)`` (MSE, zero init, Poisson sampling).

    Sample rate ``q = 1 / ceil(n / batch_size)`` (expected batch ``n q``), ``T = epochs / q``
    steps, noise multiplier :func:`dpdeepsets.privacy.dpsgd_noise_multiplier` for
    (epsilon, delta) under ``accountant`` (add/remove-one adjacency, n public: the loss is
    averaged over the expected batch size). Every random draw comes from ``noise``: the
    Poisson sampler from ``noise.torch_generator("poisson")`` (our own ``DPDataLoader``, so
    ``make_private(poisson_sampling=False)`` leaves it alone), the Gaussian noise from
    ``noise.torch_generator("gaussian")``; torch's global generator is never used. With a
    secure source the optimizer uses opacus' floating-point mitigation (``secure_mode``);
    opacus' own secure mode (torchcsprng) is not used. Returns (w_hat [D], info): the
    noise multiplier, sample rate, steps, accountant, and (``check_epsilon``) the epsilon
    of what opacus' accountant recorded, from the privacy module (PrivacyError if above
    target); public tuning runs skip that check. ``info`` also says what opacus was given
    (expected batch size, secure_mode).
    """
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader

    n, dim = x.shape
    data = _BatchTensors(torch.as_tensor(x, dtype=torch.float32),
                         torch.as_tensor(y, dtype=torch.float32)[:, None])
    batches = DataLoader(data, batch_size=min(batch_size, n), collate_fn=_as_is)
    q = 1.0 / len(batches)
    steps = int(epochs) * len(batches)
    acc = privacy.resolve_accountant(accountant, epsilon, q, 0.0)
    z = privacy.dpsgd_noise_multiplier(float(epsilon), float(delta), q, steps, acc)
    loader = DPDataLoader.from_data_loader(batches, generator=noise.torch_generator("poisson"))
    # zero start; skip_init: the default initialisation would draw from torch's global RNG
    model = torch.nn.utils.skip_init(torch.nn.Linear, dim, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with warnings.catch_warnings():
        # The engine's warning is about ITS generator; ours comes from the noise source.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        # Only the engine's step history is used; "gdp" (q = 1) is computed by the privacy module.
        engine = PrivacyEngine(accountant="rdp" if acc == "gdp" else acc)
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=z,
            max_grad_norm=clip_norm, poisson_sampling=False,
            noise_generator=noise.torch_generator("gaussian"))
        opt.secure_mode = noise.secure_mode  # what DPOptimizer(secure_mode=...) would set
        # What opacus derived from our loader must be what the noise was calibrated for.
        if not (loader.sample_rate == q and len(loader) == len(batches)
                and opt.expected_batch_size == int(n * q)):
            raise privacy.PrivacyError(
                f"opacus sees sample rate {loader.sample_rate} x {len(loader)} steps/epoch, "
                f"expected batch {opt.expected_batch_size}; calibrated for q={q}, n q={n * q}")
        loss_fn = torch.nn.MSELoss()
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                if len(xb) == 0:  # an empty Poisson batch: the step adds noise only
                    model(torch.zeros(1, dim)).sum().mul(0).backward()
                else:
                    loss_fn(model(xb), yb).backward()
                opt.step()
    history = list(engine.accountant.history)
    if history != [(z, q, steps)]:
        raise privacy.PrivacyError(f"opacus' accountant recorded {history}, expected [({z}, {q}, {steps})]")
    spent = _epsilon_spent(z, q, steps, float(delta), acc) if check_epsilon else math.nan
    if spent > epsilon * (1 + 1e-9):
        raise privacy.PrivacyError(f"DP-SGD accountant reports epsilon {spent} > target {epsilon}")
    w_hat = model._module.weight.detach().double().numpy()[0].copy()
    return w_hat, {"noise_multiplier": float(opt.noise_multiplier), "sample_rate": q,
                   "expected_batch_size": int(opt.expected_batch_size), "steps": steps,
                   "accountant": acc, "epsilon_spent": spent, "secure_mode": bool(opt.secure_mode)}


def dpsgd_subspace_fit(public: PublicModel, x: np.ndarray, y: np.ndarray, **kw):
    """DP-SGD on ``w = P v`` inside the public subspace: :func:`dpsgd_fit` on ``x P``.

    ``P`` is DP-DeepSets' projection (public). Per-example gradients ``2 (<v, P^T x> - y) P^T x``
    are clipped, noised and stepped in the d coordinates of v. Returns (P v_hat [D], info).
    """
    v_hat, info = dpsgd_fit(x @ public.proj, y, **kw)
    return public.proj @ v_hat, info


DPSGD_METHODS = ("dpsgd", "dpsgd_subspace")


def fit_sgd_method(method: str, public: PublicModel, x, y, **kw):
    """``dpsgd`` (all D coordinates) or ``dpsgd_subspace`` (the d public directions)."""
    if method == "dpsgd":
        return dpsgd_fit(x, y, **kw)
    if method == "dpsgd_subspace":
        return dpsgd_subspace_fit(public, x, y, **kw)
    raise ValueError(f"unknown DP-SGD method {method!r} (one of {DPSGD_METHODS})")


def tune_dpsgd(family: TaskFamily, public: PublicModel, cfg: dict, epsilon: float,
               noise_for: NoiseFor, method: str = "dpsgd"):
    """Grid search of (clip norm, lr) for ``method`` on PUBLIC tasks at the private n and epsilon.

    Each candidate is run on the first ``tune_tasks`` public tasks (n of their examples)
    and scored by ``||w_hat - w_bank||^2`` against the public least-squares solution
    (public information). Clip norms are ``clip_grid * sqrt(p)``, p the number of trained
    coordinates (D for dpsgd, d for dpsgd_subspace): a per-example gradient is
    ``2 (<w, x> - y) x`` and ``||x|| ~ sqrt(p)``. Noise: ``noise_for(purpose="public_tuning",
    ...)``, streams of their own (public data; the candidates of one task share theirs).
    Returns ((clip, lr), grid DataFrame).
    """
    s = cfg["dpsgd"]
    n = cfg["n"]
    coords = family.dim if method == "dpsgd" else public.proj_dim
    rows = []
    tasks = [(family.public_task(m, cfg["public_examples"])[:2], public.bank[m])
             for m in range(min(s["tune_tasks"], cfg["num_public_tasks"]))]
    for c in s["clip_grid"]:
        for lr in s["lr_grid"]:
            clip = float(c) * math.sqrt(coords)
            risks = []
            for m, ((x, y), w_ref) in enumerate(tasks):
                source = noise_for(purpose="public_tuning", method=method, D=family.dim,
                                   epsilon=epsilon, public_task=m)
                w_hat, _ = fit_sgd_method(
                    method, public, x[:n], y[:n], epsilon=epsilon, delta=cfg["delta"],
                    clip_norm=clip, lr=float(lr), epochs=s["epochs"], batch_size=s["batch_size"],
                    accountant=s["accountant"], noise=source, check_epsilon=False)
                risks.append(excess_risk(w_hat, w_ref))
            rows.append({"method": method, "clip_norm": clip, "lr": float(lr),
                         "public_risk": float(np.mean(risks))})
    grid = pd.DataFrame(rows)
    best = grid.loc[grid["public_risk"].idxmin()]
    log.info("D=%d eps=%g: %s tuned on %d public tasks: clip %.3g lr %.3g (public risk %.4f)",
             family.dim, epsilon, method, len(tasks), best.clip_norm, best.lr, best.public_risk)
    return (float(best.clip_norm), float(best.lr)), grid
