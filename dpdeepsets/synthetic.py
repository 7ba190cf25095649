"""Synthetic linear regression: DP-DeepSets vs DP-SGD when tasks share a low-dim subspace.

Setting
-------
A task is ``y = <w, x> + noise`` with ``x ~ N(0, I_D)`` and noise ``N(0, noise_std^2)``.
Task vectors are ``w = U a`` with ``a ~ N(0, I_k / k)`` (so ``E||w||^2 = 1``) and one
``D x k`` orthonormal ``U`` shared by all tasks and *never shown to the learner*
(:class:`TaskFamily` holds it; only the task generator and the oracle reference read it).
``M`` public tasks come with ``public_examples`` examples each; the private task has ``n``.
Because ``x`` is isotropic, the excess risk of an estimate is ``||w_hat - w||^2``
(:func:`excess_risk`; the irreducible ``noise_std^2`` is excluded).

Methods (all fitted to the same private task, the same (epsilon, delta), one adjacency)
---------------------------------------------------------------------------------------
``dpdeepsets``  Public side (:func:`fit_public`): least squares on each public task, a
    projection ``P`` (``D x d``) onto the top singular directions of these solutions
    (``d`` from the public eigengap unless ``proj_dim`` is set), the solutions projected
    onto ``span(P)`` as regression targets (the "bank"), a clip norm from the
    public per-example embedding norms, and the main pipeline's
    :class:`dpdeepsets.hypernet.HyperNet`, trained noise-aware by
    :func:`dpdeepsets.hypernet.train_hypernet` with ``w`` as one rank-1 "LoRA target".
    Private side (:func:`dpdeepsets_fit`): per-example embedding ``phi(x, y) = y P^T x``
    (whose mean estimates ``P^T w``), released ONCE with
    :func:`dpdeepsets.privacy.release_clipped_mean`; the hypernetwork maps the noisy mean
    to ``w_hat`` (post-processing).
``dpsgd``  Opacus DP-SGD (Poisson sampling, the noise multiplier opacus'
    ``make_private_with_epsilon`` would choose, accountant of choice) on
    ``nn.Linear(D, 1, bias=False)`` with MSE, started at zero (:func:`dpsgd_fit`). Clip
    norm and learning rate come from a grid searched on public tasks only, at the same n
    and epsilon (:func:`tune_dpsgd`).
References (not private, ``epsilon = inf``): ``least_squares`` on the private task,
``zero`` (``w_hat = 0``, excess risk ``||w||^2``) and ``oracle_subspace_ls``, least
squares restricted to the true public subspace ``span(U)`` (non-private and knows U: for
an unshifted task its excess risk is about ``noise_std^2 k / n``; for a shifted one it
also pays the part of ``w`` outside ``span(U)``).

Shift
-----
``shift_degrees``: the private ``w`` is rotated out of ``span(U)`` by that angle,
``w = cos(t) w_in + sin(t) w_out`` with ``w_out`` orthogonal to ``span(U)`` and
``||w_out|| = ||w_in||`` (:func:`shift_vector`). Public tasks are never shifted.

Adjacency: opacus' accountants certify add/remove-one adjacency with ``n`` treated as
public (the optimizer averages by the expected batch size); the default
``adjacency: add_remove`` gives DP-DeepSets the same notion. ``replace_one`` is stricter
for DP-DeepSets only (sensitivity 2C/n instead of C/n).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import privacy
from .hypernet import HyperNet, train_hypernet
from .lora import Target

log = logging.getLogger(__name__)

METHODS = ("dpdeepsets", "dpsgd")
REFERENCES = ("least_squares", "zero", "oracle_subspace_ls")

# Stream identifiers for the seeded generators (one independent stream per purpose).
_SUBSPACE, _PUBLIC, _PRIVATE, _OUTSIDE, _RELEASE, _SGD, _TUNE = range(7)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _seed(*keys: int) -> int:
    """A non-negative 63-bit integer seed derived from ``keys``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------
def subspace_basis(dim: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``dim x k`` matrix with orthonormal columns."""
    if not 1 <= k <= dim:
        raise ValueError(f"synthetic.k must be in [1, D], got k={k}, D={dim}")
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.sign(np.diag(r))


def shift_vector(w_in: np.ndarray, basis: np.ndarray, degrees: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Rotate ``w_in`` (in ``span(basis)``) out of the subspace by ``degrees``.

    Returns ``cos(t) w_in + sin(t) w_out``, ``w_out`` a random direction orthogonal to the
    subspace with ``||w_out|| = ||w_in||``; the norm is preserved and the angle between the
    result and the subspace is ``t``. Requires ``k < D`` unless ``degrees == 0``.
    """
    if degrees == 0:
        return w_in.copy()
    if not 0 <= degrees <= 90:
        raise ValueError(f"synthetic.shift_degrees must be in [0, 90], got {degrees}")
    g = rng.standard_normal(len(w_in))
    g -= basis @ (basis.T @ g)
    norm = np.linalg.norm(g)
    if norm < 1e-12:
        raise ValueError("cannot shift a task out of a subspace that fills the whole space (k = D)")
    t = math.radians(degrees)
    return math.cos(t) * w_in + math.sin(t) * (np.linalg.norm(w_in) / norm) * g


def angle_to_subspace(w: np.ndarray, basis: np.ndarray) -> float:
    """Angle in degrees between ``w`` and ``span(basis)`` (orthonormal columns)."""
    c = np.linalg.norm(basis.T @ w) / np.linalg.norm(w)
    return math.degrees(math.acos(min(1.0, c)))


@dataclass
class TaskFamily:
    """The data-generating process of one dimension D. ``basis`` is hidden from learners."""

    dim: int
    k: int
    noise_std: float
    seed: int
    basis: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.basis = subspace_basis(self.dim, self.k, _rng(self.seed, _SUBSPACE, self.dim))

    def _draw(self, rng: np.random.Generator, n: int, w: np.ndarray):
        x = rng.standard_normal((n, self.dim))
        y = x @ w + self.noise_std * rng.standard_normal(n)
        return x, y

    def coefficients(self, rng: np.random.Generator) -> np.ndarray:
        return self.basis @ (rng.standard_normal(self.k) / math.sqrt(self.k))

    def public_task(self, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Public task m: (X [n, D], y [n], true w). Deterministic in (seed, D, m)."""
        rng = _rng(self.seed, _PUBLIC, self.dim, m)
        w = self.coefficients(rng)
        return (*self._draw(rng, n, w), w)

    def private_task(self, rep: int, n: int, shift_degrees: float = 0.0):
        """Private task of repetition ``rep``, rotated out of the subspace by ``shift_degrees``.

        Common random numbers: the subspace coefficients ``a`` depend only on (seed, rep),
        so repetition ``rep`` has the same ``||w||`` in every D; x and the label noise
        depend on (seed, D, rep); tasks of one repetition at different angles differ only
        by the rotation.
        """
        w_in = self.coefficients(_rng(self.seed, _PRIVATE, rep))
        rng = _rng(self.seed, _PRIVATE, self.dim, rep)
        x = rng.standard_normal((n, self.dim))
        noise = self.noise_std * rng.standard_normal(n)
        w = shift_vector(w_in, self.basis, shift_degrees, _rng(self.seed, _OUTSIDE, self.dim, rep))
        return x, x @ w + noise, w


# --------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------
def excess_risk(w_hat: np.ndarray, w: np.ndarray) -> float:
    """E_x[(<w_hat, x> - <w, x>)^2] = ||w_hat - w||^2 for x ~ N(0, I)."""
    return float(np.sum((np.asarray(w_hat, dtype=np.float64) - w) ** 2))


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ordinary least squares: normal equations when n >= D (x is well conditioned here;
    LAPACK's SVD-based lstsq is ~50x slower), the minimum-norm lstsq solution otherwise."""
    n, dim = x.shape
    if n >= dim:
        try:
            return np.linalg.solve(x.T @ x, x.T @ y)
        except np.linalg.LinAlgError:
            pass
    return np.linalg.lstsq(x, y, rcond=None)[0]


def subspace_least_squares(x: np.ndarray, y: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Least squares restricted to ``span(basis)``: ``basis @ lstsq(x @ basis, y)``."""
    return basis @ least_squares(x @ basis, y)


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
    """Everything DP-DeepSets learns from public tasks (no private data, no basis)."""

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
    torch.manual_seed(_seed(h["seed"], family.dim))
    net = HyperNet(d, [target], 1, clip_norm=clip, d_model=h["d_model"], layers=h["layers"],
                   heads=h["heads"])
    bank_t = {"w": torch.as_tensor(bank, dtype=torch.float32)[:, :, None]}
    net.set_target_stats(bank_t)
    curve = train_hypernet(net, emb, members, bank_t, list(train_sigmas.values()),
                           steps=h["steps"], batch_size=h["batch_size"], lr=h["lr"],
                           weight_decay=h["weight_decay"], subsample_fraction=n / n_pub,
                           seed=_seed(h["seed"], family.dim))
    net.eval().requires_grad_(False)
    w0 = max(1, min(50, len(curve) // 4))
    model = PublicModel(family.dim, proj, eig, clip, net, train_sigmas, bank,
                        float(np.mean(curve[:w0])), float(np.mean(curve[-w0:])))
    log.info("D=%d: public d=%d (eigenvalues %s), clip %.3g, hypernet loss %.4f -> %.4f",
             family.dim, d, np.array2string(eig[:d + 2], precision=3), clip, model.loss_first,
             model.loss_last)
    return model


def dpdeepsets_fit(public: PublicModel, x: np.ndarray, y: np.ndarray, *, epsilon: float,
                   delta: float, adjacency: str, noise: str, seed: int | None):
    """ONE Gaussian release of the clipped mean embedding, then the hypernetwork.

    Returns (w_hat [D], ledger of :func:`dpdeepsets.privacy.release_clipped_mean`).
    """
    z, ledger = privacy.release_clipped_mean(
        embed(x, y, public.proj), epsilon=epsilon, delta=delta, clip_norm=public.clip_norm,
        adjacency=adjacency, noise=noise, seed=seed)
    with torch.no_grad():
        out = public.net(torch.as_tensor(z, dtype=torch.float32)[None],
                         torch.tensor([ledger["sigma"]], dtype=torch.float32))["w"]
    return out[0, :, 0].double().numpy(), ledger


# --------------------------------------------------------------------------
# DP-SGD
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
def dpsgd_noise_multiplier(epsilon: float, delta: float, sample_rate: float, epochs: int,
                           accountant: str) -> float:
    """Opacus' ``get_noise_multiplier`` for (epsilon, delta) after ``epochs`` epochs.

    Exactly the call ``PrivacyEngine.make_private_with_epsilon`` makes (same arguments,
    opacus' default tolerance); memoised, because the search (~0.2 s) depends only on
    these public numbers and is otherwise repeated for every run of the tuning grid.
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                      sample_rate=sample_rate, epochs=epochs,
                                      accountant=accountant))


def dpsgd_fit(x: np.ndarray, y: np.ndarray, *, epsilon: float, delta: float, clip_norm: float,
              lr: float, epochs: int, batch_size: int, accountant: str, seed: int,
              check_epsilon: bool = True):
    """Opacus DP-SGD on ``nn.Linear(D, 1, bias=False)`` (MSE, zero init, Poisson sampling).

    What ``PrivacyEngine.make_private_with_epsilon`` does, with the noise-multiplier search
    memoised (:func:`dpsgd_noise_multiplier`): sample rate ``1 / len(loader)`` (expected
    batch size ``batch_size``), noise multiplier for (epsilon, delta) after ``epochs``
    epochs, then ``make_private``. Returns (w_hat [D], info). With ``check_epsilon`` the
    run's own accountant is asked for its epsilon at the end, which is recorded and must
    be <= epsilon (PrivacyError otherwise); public tuning runs skip that query.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    n, dim = x.shape
    model = torch.nn.Linear(dim, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    data = _BatchTensors(torch.as_tensor(x, dtype=torch.float32),
                         torch.as_tensor(y, dtype=torch.float32)[:, None])
    loader = DataLoader(data, batch_size=min(batch_size, n), collate_fn=_as_is)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with warnings.catch_warnings():
        # research runs: opacus' non-cryptographic RNG (the release side says the same)
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
        engine = PrivacyEngine(accountant=accountant)
        sigma = dpsgd_noise_multiplier(float(epsilon), float(delta), 1 / len(loader),
                                       int(epochs), engine.accountant.mechanism())
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=clip_norm, criterion=torch.nn.MSELoss(), poisson_sampling=True)
        loss_fn = torch.nn.MSELoss()
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                if len(xb) == 0:  # an empty Poisson batch: the step adds noise only
                    model(torch.zeros(1, dim)).sum().mul(0).backward()
                else:
                    loss_fn(model(xb), yb).backward()
                opt.step()
    spent = float(engine.get_epsilon(delta)) if check_epsilon else math.nan
    if spent > epsilon * (1 + 1e-9):
        raise privacy.PrivacyError(f"DP-SGD accountant reports epsilon {spent} > target {epsilon}")
    w_hat = model._module.weight.detach().double().numpy()[0].copy()
    return w_hat, {"noise_multiplier": float(opt.noise_multiplier), "epsilon_spent": spent,
                   "steps": int(epochs * len(loader))}


def tune_dpsgd(family: TaskFamily, public: PublicModel, cfg: dict, epsilon: float):
    """Grid search of (clip norm, lr) for DP-SGD on PUBLIC tasks at the private n and epsilon.

    Each candidate is run on the first ``tune_tasks`` public tasks (n of their examples)
    and scored by ``||w_hat - w_bank||^2`` against the public least-squares solution
    (public information). Clip norms are ``clip_grid * sqrt(D)`` (a per-example gradient
    is ``2 (<w, x> - y) x`` and ``||x|| ~ sqrt(D)``). Returns ((clip, lr), grid DataFrame).
    """
    s = cfg["dpsgd"]
    n = cfg["n"]
    rows = []
    tasks = [(family.public_task(m, cfg["public_examples"])[:2], public.bank[m])
             for m in range(min(s["tune_tasks"], cfg["num_public_tasks"]))]
    for c in s["clip_grid"]:
        for lr in s["lr_grid"]:
            clip = float(c) * math.sqrt(family.dim)
            risks = []
            for m, ((x, y), w_ref) in enumerate(tasks):
                w_hat, _ = dpsgd_fit(x[:n], y[:n], epsilon=epsilon, delta=cfg["delta"],
                                     clip_norm=clip, lr=float(lr), epochs=s["epochs"],
                                     batch_size=s["batch_size"], accountant=s["accountant"],
                                     seed=_seed(cfg["seed"], _TUNE, family.dim, m,
                                                int(1000 * epsilon)), check_epsilon=False)
                risks.append(excess_risk(w_hat, w_ref))
            rows.append({"clip_norm": clip, "lr": float(lr), "public_risk": float(np.mean(risks))})
    grid = pd.DataFrame(rows)
    best = grid.loc[grid["public_risk"].idxmin()]
    log.info("D=%d eps=%g: DP-SGD tuned on %d public tasks: clip %.3g lr %.3g (public risk %.4f)",
             family.dim, epsilon, len(tasks), best.clip_norm, best.lr, best.public_risk)
    return (float(best.clip_norm), float(best.lr)), grid


# --------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------
def _references(family: TaskFamily, x, y, w) -> list[dict]:
    return [{"method": "least_squares", "excess_risk": excess_risk(least_squares(x, y), w)},
            {"method": "zero", "excess_risk": excess_risk(np.zeros_like(w), w)},
            {"method": "oracle_subspace_ls",
             "excess_risk": excess_risk(subspace_least_squares(x, y, family.basis), w)}]


def _private_methods(family, public, tuned, cfg, x, y, w, eps, keys) -> list[dict]:
    """DP-DeepSets and DP-SGD on one private task. ``keys`` = (rep, cell): the seeded
    release noise depends on them only (the same noise vector in every D when d agrees:
    common random numbers); DP-SGD's seed also depends on D."""
    s = cfg["dpsgd"]
    rows = []
    noise_seed = _seed(cfg["noise_seed"], _RELEASE, *keys) if cfg["noise"] == "seeded" else None
    w_hat, ledger = dpdeepsets_fit(public, x, y, epsilon=eps, delta=cfg["delta"],
                                   adjacency=cfg["adjacency"], noise=cfg["noise"], seed=noise_seed)
    rows.append({"method": "dpdeepsets", "excess_risk": excess_risk(w_hat, w),
                 "sigma": ledger["sigma"], "sensitivity": ledger["sensitivity"],
                 "clip_norm": ledger["clip_norm"], "epsilon_spent": ledger["epsilon"]})
    clip, lr = tuned[eps]
    w_hat, info = dpsgd_fit(x, y, epsilon=eps, delta=cfg["delta"], clip_norm=clip, lr=lr,
                            epochs=s["epochs"], batch_size=s["batch_size"],
                            accountant=s["accountant"],
                            seed=_seed(cfg["seed"], _SGD, family.dim, *keys))
    rows.append({"method": "dpsgd", "excess_risk": excess_risk(w_hat, w), "clip_norm": clip,
                 "lr": lr, "noise_multiplier": info["noise_multiplier"],
                 "epsilon_spent": info["epsilon_spent"]})
    return rows


@dataclass
class Results:
    """What :func:`run_experiment` returns; one row per estimate in ``excess`` / ``shift``.

    ``excess`` and ``shift`` columns: D, k, proj_dim, n, epsilon (inf for the non-private
    references), delta, rep, shift_degrees, method, excess_risk, and where they apply
    sigma / sensitivity / clip_norm (DP-DeepSets' release, from its ledger), clip_norm / lr
    / noise_multiplier (DP-SGD), epsilon_spent (the ledger's epsilon for DP-DeepSets, the
    opacus accountant's final epsilon for DP-SGD). ``tuning``: every DP-SGD grid point
    scored on public tasks (chosen = the one used). ``public``: per D, what DP-DeepSets
    learned from public tasks (d, clip norm, eigenvalues, hypernetwork loss).
    """

    excess: pd.DataFrame
    shift: pd.DataFrame
    tuning: pd.DataFrame
    public: pd.DataFrame


_COLUMNS = ["D", "k", "proj_dim", "n", "epsilon", "delta", "rep", "shift_degrees", "method",
            "excess_risk", "sigma", "sensitivity", "clip_norm", "lr", "noise_multiplier",
            "epsilon_spent"]


def run_experiment(cfg: dict) -> Results:
    """The whole comparison for the ``synthetic`` config section (schema defaults filled)."""
    eps_grid = [float(e) for e in cfg["epsilons"]]
    shift_eps = float(cfg["shift_epsilon"])
    if any(cfg["k"] >= d for d in [*cfg["dims"], cfg["shift_dim"]]):
        raise ValueError(f"synthetic.k={cfg['k']} must be smaller than every D in synthetic.dims "
                         f"{cfg['dims']} and synthetic.shift_dim={cfg['shift_dim']}")
    families, publics, tuned, grids = {}, {}, {}, []

    def world(dim):
        if dim not in publics:
            families[dim] = TaskFamily(dim, cfg["k"], cfg["noise_std"], cfg["seed"])
            publics[dim] = fit_public(families[dim], cfg, sorted(set(eps_grid) | {shift_eps}))
            tuned[dim] = {}
        return families[dim], publics[dim]

    def tune(dim, eps):
        if eps not in tuned[dim]:
            tuned[dim][eps], grid = tune_dpsgd(families[dim], publics[dim], cfg, eps)
            grid["chosen"] = (grid["clip_norm"] == tuned[dim][eps][0]) & (grid["lr"] == tuned[dim][eps][1])
            grids.append(grid.assign(D=dim, epsilon=eps))

    def base(dim, rep, shift, public):
        return {"D": dim, "k": cfg["k"], "proj_dim": public.proj_dim, "n": cfg["n"],
                "delta": cfg["delta"], "rep": rep, "shift_degrees": float(shift)}

    rows = []
    for dim in cfg["dims"]:
        family, public = world(dim)
        for eps in eps_grid:
            tune(dim, eps)
        for rep in range(cfg["repetitions"]):
            x, y, w = family.private_task(rep, cfg["n"])
            for r in _references(family, x, y, w):
                rows.append({**base(dim, rep, 0, public), "epsilon": math.inf, **r})
            for i, eps in enumerate(eps_grid):
                for r in _private_methods(family, public, tuned[dim], cfg, x, y, w, eps,
                                          (rep, i)):
                    rows.append({**base(dim, rep, 0, public), "epsilon": eps, **r})
        log.info("D=%d done", dim)

    shift_rows = []
    dim = cfg["shift_dim"]
    family, public = world(dim)
    tune(dim, shift_eps)
    for j, deg in enumerate(cfg["shift_degrees"]):
        for rep in range(cfg["repetitions"]):
            x, y, w = family.private_task(rep, cfg["n"], deg)
            for r in _references(family, x, y, w):
                shift_rows.append({**base(dim, rep, deg, public), "epsilon": math.inf, **r})
            for r in _private_methods(family, public, tuned[dim], cfg, x, y, w, shift_eps,
                                      (rep, 1000 + j)):
                shift_rows.append({**base(dim, rep, deg, public), "epsilon": shift_eps, **r})
    log.info("shift experiment done (D=%d, epsilon=%g)", dim, shift_eps)
    public_rows = [{"D": d, "proj_dim": p.proj_dim, "clip_norm": p.clip_norm,
                    "top_eigenvalues": " ".join(f"{v:.4g}" for v in p.eigenvalues[:p.proj_dim + 2]),
                    "hypernet_loss_first": p.loss_first, "hypernet_loss_last": p.loss_last,
                    "train_sigmas": " ".join(f"{e:g}:{v:.4g}" for e, v in p.train_sigmas.items())}
                   for d, p in sorted(publics.items())]
    tuning = pd.concat(grids, ignore_index=True)[["D", "epsilon", "clip_norm", "lr",
                                                   "public_risk", "chosen"]]
    return Results(pd.DataFrame(rows).reindex(columns=_COLUMNS),
                   pd.DataFrame(shift_rows).reindex(columns=_COLUMNS), tuning,
                   pd.DataFrame(public_rows))


# --------------------------------------------------------------------------
# summaries and figures
# --------------------------------------------------------------------------
def summarise(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean excess risk with a 95% normal confidence interval (1.96 standard errors)."""
    g = df.groupby(by, dropna=False)["excess_risk"]
    s = g.agg(["mean", "std", "count"]).reset_index()
    s["ci95"] = 1.96 * s["std"].fillna(0.0) / np.sqrt(s["count"])
    return s


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean DP-SGD excess risk / mean DP-DeepSets excess risk; rows D, columns epsilon."""
    s = summarise(df[df["method"].isin(METHODS)], ["D", "epsilon", "method"])
    p = s.pivot_table(index=["D", "epsilon"], columns="method", values="mean")
    return (p["dpsgd"] / p["dpdeepsets"]).unstack("epsilon")


def format_tables(df: pd.DataFrame, shift: pd.DataFrame, public: pd.DataFrame | None = None) -> str:
    """Human-readable summary: mean ± CI per method, the ratio table, the shift table."""
    def fmt(s, index):
        s = s.copy()
        s["cell"] = [f"{m:.4f} ± {c:.4f}" for m, c in zip(s["mean"], s["ci95"])]
        return s.pivot_table(index=index, columns="method", values="cell", aggfunc="first")

    reps = int(df["rep"].nunique())
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        lines = [f"Mean excess risk ± 95% CI (1.96 s.e. over {reps} repetitions); "
                 "references (not private) at epsilon = inf",
                 fmt(summarise(df, ["D", "epsilon", "method"]), ["D", "epsilon"]).to_string(),
                 "",
                 "Ratio mean DP-SGD / mean DP-DeepSets excess risk (rows D, columns epsilon)",
                 ratio_table(df).to_string(float_format=lambda v: f"{v:.2f}"),
                 ""]
        if len(shift):
            eps = shift.loc[np.isfinite(shift["epsilon"]), "epsilon"].iloc[0]
            lines += [f"Shift: private w rotated out of the public subspace (D="
                      f"{int(shift['D'].iloc[0])}, DP methods at epsilon={eps:g})",
                      fmt(summarise(shift, ["shift_degrees", "method"]),
                          ["shift_degrees"]).to_string(), ""]
        if public is not None and len(public):
            lines += ["Learned from public tasks only (DP-DeepSets)",
                      public.to_string(index=False, float_format=lambda v: f"{v:.4g}"), ""]
    return "\n".join(lines)


_STYLE = {"dpdeepsets": ("C0", "o", "DP-DeepSets"), "dpsgd": ("C3", "s", "DP-SGD (opacus)"),
          "least_squares": ("C2", None, "least squares (non-private)"),
          "oracle_subspace_ls": ("C4", None, "oracle: LS in true subspace (non-private)"),
          "zero": ("0.4", None, "zero predictor")}


def _savefig(fig, path):
    from .io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)


def plot_excess_risk(path, df: pd.DataFrame) -> None:
    """Excess risk vs epsilon (log x and y), one panel per D, 95% CIs; references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(df["D"].unique())
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.8), sharey=True,
                             squeeze=False)
    s = summarise(df, ["D", "epsilon", "method"])
    for ax, dim in zip(axes[0], dims):
        sd = s[s["D"] == dim]
        for method in METHODS:
            g = sd[sd["method"] == method].sort_values("epsilon")
            color, marker, label = _STYLE[method]
            ax.errorbar(g["epsilon"], g["mean"], yerr=g["ci95"], color=color, marker=marker,
                        capsize=3, label=label)
        for method in REFERENCES:
            g = sd[sd["method"] == method]
            if len(g):
                color, _, label = _STYLE[method]
                m, c = float(g["mean"].iloc[0]), float(g["ci95"].iloc[0])
                ax.axhline(m, color=color, linestyle="--", label=label)
                ax.axhspan(max(m - c, 1e-12), m + c, color=color, alpha=0.12)
        k = int(df["k"].iloc[0])
        ax.set_title(f"D = {dim}, k = {k}, n = {int(df['n'].iloc[0])}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("epsilon (log2 scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("excess risk ||w_hat - w||^2 (mean, 95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _savefig(fig, path)
    plt.close(fig)


def plot_shift(path, shift: pd.DataFrame) -> None:
    """Excess risk vs the private task's angle to the public subspace, 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    s = summarise(shift, ["shift_degrees", "method"])
    for method in (*METHODS, *REFERENCES):
        g = s[s["method"] == method].sort_values("shift_degrees")
        color, marker, label = _STYLE[method]
        ax.errorbar(g["shift_degrees"], g["mean"], yerr=g["ci95"], color=color,
                    marker=marker or ".", linestyle="-" if marker else "--", capsize=3,
                    label=label)
    eps = shift.loc[np.isfinite(shift["epsilon"]), "epsilon"].iloc[0]
    ax.set_title(f"Private task outside the public subspace (D = {int(shift['D'].iloc[0])}, "
                 f"epsilon = {eps:g})", fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("angle between private w and the public subspace (degrees)")
    ax.set_ylabel("excess risk (mean, 95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
