"""Private Evolution (PE): DP synthetic images from a generator's APIs alone, without training.

Lin et al., "Differentially Private Synthetic Data via Foundation Model APIs 1: Images"
(ICLR 2024), Algorithms 1 and 2; reference implementation microsoft/DPSDA.  The training-free
peer of the hypernetwork: it never changes a weight of the base model.

The two APIs of the public base model
-------------------------------------
``RANDOM_API(N)``         N DDIM samples (:func:`random_api`).
``VARIATION_API(x, s)``   SDEdit (Meng et al. 2022) at strength s in (0, 1]
                          (:func:`variation_api`): DDPM forward noise to timestep
                          t_v = round(s * num_train_timesteps), then DDIM from there to 0.
                          Small s keeps the image; s = 1 is (almost) a fresh sample.

The algorithm (Algorithm 1; ``params`` is a :class:`PEParams`, s_t its strength schedule)
-------------------------------------------------------------------------------------------
::

    S_0 = RANDOM_API(N)
    for t = 1 .. T:
        e_j  = embedding of candidate j of S_{t-1}; with lookahead k >= 1 the mean embedding
               of k variations of it at strength s_t (:func:`lookahead_embeddings`)
        h    = votes: every private example votes for its L2-nearest e_j (:func:`vote_histogram`)
        h~   = h + N(0, sigma^2 I)            THE DP release of iteration t (:func:`noisy_histogram`)
        w    = max(h~ - H, 0)                 Algorithm 2's threshold: bins at or below H get 0
        S'_t = N draws from S_{t-1} with probabilities w / sum(w)   (:func:`resample`)
        S_t  = VARIATION_API(S'_t, s_t)
    return S_T

The cell's samples are S_T, the output of Algorithm 1 (and what DPSDA evaluates): the
variation of the last selection.  It costs no privacy (post-processing), and the last
variation turns the selection's duplicates into distinct images while the schedule's small
final strength keeps them close to the candidates the private data voted for.

The threshold follows the paper and DPSDA (``max(h~ - H, 0)``): a bin whose noisy count is at
or below H gets weight 0, a surviving bin weight h~ - H.  If no bin survives, the next
population is drawn uniformly (the iteration's statistics say ``uniform_fallback``).

Privacy (the calibration is :func:`dpdeepsets.privacy.pe_histogram_sigma`)
----------------------------------------------------------------------------
Private data enters only as ``private_embeddings``, one row per private example, and only
through :func:`vote_histogram`.  For a fixed candidate set each example adds one vote (a
one-hot vector), so one example added or removed changes h by exactly one vote (L2
sensitivity 1), one example replaced moves at most one vote between two bins (sqrt 2).
Everything else in an iteration -- the candidates, their lookahead embeddings, the
threshold, the resampling, the variations -- is a function of public inputs, public
randomness and the earlier noisy histograms, i.e. post-processing, so the T iterations are
an adaptive composition of T Gaussian mechanisms: (sqrt(T) Delta / sigma)-GDP (Dong, Roth &
Su 2019), which is what the calibration certifies.  Assumptions:

* ``embed`` and the private embeddings' embedder depend on public data only (e.g. a
  projection fitted on the public pool), and each private row is a function of one private
  example alone;
* the base model, N, T, H, k, the strength schedule and the DDIM step counts are chosen
  without looking at the private data;
* the Gaussian noise comes from ``noise_source`` (:mod:`dpdeepsets.noise`: a secret key or OS
  entropy; purpose ``pe-histogram-{t}``, so every iteration has its own independent noise),
  and nobody but the data owner holds its key;
* the noise-free histogram h is private: it is never returned or logged.  Every number this
  module returns or logs is computed from the noisy histograms (safe to publish).

Randomness
----------
Two kinds, kept apart.  The histogram noise protects privacy and comes from the noise
source only.  Everything else -- the random API's starting noise (``seed`` itself, so S_0
is the base model's ``ddim_sample(seed=seed)``, common random numbers with the other
methods), the variations' forward noise and the resampling -- is public randomness derived
from ``seed`` (:func:`dpdeepsets.seeds.derive_seed`), which protects nothing and needs no
protection: a run is reproducible from its config, its key and its private data.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm.auto import tqdm

from .seeds import derive_seed

log = logging.getLogger(__name__)

__all__ = [
    "STRENGTH_SCHEDULES",
    "PEParams",
    "strength_schedule",
    "random_api",
    "sdedit_timesteps",
    "variation_api",
    "lookahead_embeddings",
    "vote_histogram",
    "noisy_histogram",
    "resample",
    "private_evolution",
]

STRENGTH_SCHEDULES = ("geometric", "linear")


# --------------------------------------------------------------------------
# validation (one-line errors)
# --------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None


def _check_strength(name: str, value) -> float:
    s = _real(name, value)
    if not 0.0 < s <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return s


def _check_nonnegative(name: str, value) -> float:
    v = _real(name, value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def _as_matrix(name: str, x, min_rows: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise ValueError(f"{name} must be a float array [rows >= {min_rows}, dim >= 1], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


# --------------------------------------------------------------------------
# the knobs
# --------------------------------------------------------------------------
def strength_schedule(start: float, end: float, iterations: int, kind: str = "geometric") -> np.ndarray:
    """The variation strengths s_1 >= ... >= s_T of the T iterations, from ``start`` to ``end``.

    ``geometric``: s_t = start * (end / start)^((t - 1) / (T - 1)); ``linear``: evenly spaced.
    Coarse variations first, fine ones last, as in the paper's decreasing variation degrees.
    Needs 0 < end <= start <= 1; T = 1 gives [start].
    """
    s0, s1 = _check_strength("strength start", start), _check_strength("strength end", end)
    t = _check_int("iterations", iterations, 1)
    if s1 > s0:
        raise ValueError(f"the strength schedule must not increase: start {start!r} < end {end!r}")
    if kind not in STRENGTH_SCHEDULES:
        raise ValueError(f"strength schedule must be one of {STRENGTH_SCHEDULES}, got {kind!r}")
    if t == 1:
        return np.array([s0])
    if kind == "geometric":
        return s0 * (s1 / s0) ** (np.arange(t) / (t - 1))
    return np.linspace(s0, s1, t)


@dataclass(frozen=True)
class PEParams:
    """Public knobs of Private Evolution (chosen without looking at the private data).

    population (N)      candidates per iteration, and the number of samples returned
    iterations (T)      noisy histograms, i.e. compositions the privacy budget is split over
    threshold (H)       noisy counts at or below H get weight 0 (Algorithm 2)
    lookahead (k)       0: a candidate's own embedding votes; k >= 1: the mean embedding of k
                        variations of it (the paper's lookahead)
    strength_start / strength_end / schedule   :func:`strength_schedule`
    random_steps        DDIM steps of the random API
    variation_steps     DDIM steps of the variation API's full grid (a variation at strength s
                        runs about s * variation_steps of them)
    """

    population: int
    iterations: int
    threshold: float
    lookahead: int
    strength_start: float
    strength_end: float
    random_steps: int
    variation_steps: int
    schedule: str = "geometric"

    def __post_init__(self):
        _check_int("population", self.population, 1)
        _check_int("iterations", self.iterations, 1)
        _check_nonnegative("threshold", self.threshold)
        _check_int("lookahead", self.lookahead, 0)
        _check_int("random_steps", self.random_steps, 1)
        _check_int("variation_steps", self.variation_steps, 1)
        self.strengths()  # validates the schedule

    def strengths(self) -> np.ndarray:
        """s_1, ..., s_T."""
        return strength_schedule(self.strength_start, self.strength_end, self.iterations, self.schedule)


# --------------------------------------------------------------------------
# the generator's two APIs
# --------------------------------------------------------------------------
def random_api(unet, scheduler, *, num_samples: int, steps: int, seed: int, batch_size: int = 64,
               device="cpu", desc: str = "pe random") -> np.ndarray:
    """RANDOM_API: ``num_samples`` DDIM samples of the base model as uint8 NHWC.

    :func:`dpdeepsets.diffusion.ddim_sample` with ``seed`` (public): same seed, same samples.
    """
    from .diffusion import ddim_sample, tensor_to_images

    _check_int("num_samples", num_samples, 1)
    x = ddim_sample(unet, scheduler, num_samples=num_samples, steps=_check_int("steps", steps, 1),
                    seed=seed, batch_size=_check_int("batch_size", batch_size, 1), desc=desc,
                    device=device)
    return tensor_to_images(x)


def sdedit_timesteps(ddim_scheduler, strength: float, num_train_timesteps: int):
    """The DDIM timesteps a variation at ``strength`` runs: those <= t_v, t_v = round(s T_train).

    ``ddim_scheduler`` has had ``set_timesteps`` called.  t_v is capped at T_train - 1 (the
    last timestep there is).  The first returned timestep is where the forward noise is
    added: the largest grid timestep <= t_v (never more noise than asked, and the noise level
    matches the step that removes it); when no grid timestep is <= t_v, the smallest one.
    """
    s = _check_strength("strength", strength)
    t_v = min(int(round(s * num_train_timesteps)), num_train_timesteps - 1)
    ts = ddim_scheduler.timesteps
    kept = ts[ts <= t_v]
    return kept if len(kept) else ts[-1:]


def variation_api(images: np.ndarray, unet, scheduler, *, strength: float, steps: int, generator,
                  batch_size: int = 64, device="cpu", desc: str = "pe variation") -> np.ndarray:
    """VARIATION_API: one SDEdit variation of each uint8 NHWC image, as uint8 NHWC.

    Forward noise to the first timestep of :func:`sdedit_timesteps` (``scheduler.add_noise``,
    noise drawn from ``generator``, a CPU ``torch.Generator`` of public randomness, all
    images' noise at once so the result does not depend on ``batch_size``), then
    deterministic DDIM (eta = 0) over the grid of ``steps`` timesteps from there to 0, the
    UNet run on ``batch_size`` images at a time.  ``strength`` in (0, 1].
    """
    import torch
    from diffusers import DDIMScheduler

    from .diffusion import images_to_tensor, tensor_to_images

    s = _check_strength("strength", strength)
    bs = _check_int("batch_size", batch_size, 1)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(_check_int("steps", steps, 1))
    timesteps = sdedit_timesteps(ddim, s, scheduler.config.num_train_timesteps)
    x0_all = images_to_tensor(images)
    noise_all = torch.randn(x0_all.shape, generator=generator)
    out = []
    bar = tqdm(total=len(x0_all) * len(timesteps), desc=desc, unit="img-step", mininterval=5, leave=False)
    with torch.no_grad():
        for start in range(0, len(x0_all), bs):
            x0 = x0_all[start:start + bs].to(device)
            t0 = torch.full((x0.shape[0],), int(timesteps[0]), dtype=torch.long)
            x = scheduler.add_noise(x0, noise_all[start:start + bs].to(device), t0.to(device))
            for t in timesteps:
                x = ddim.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
                bar.update(x.shape[0])
            out.append(x.clamp(-1, 1).cpu())
    bar.close()
    return tensor_to_images(torch.cat(out))


# --------------------------------------------------------------------------
# the vote and its noisy release
# --------------------------------------------------------------------------
def _embed(embed: Callable, images: np.ndarray) -> np.ndarray:
    e = _as_matrix("embed(images)", embed(images))
    if e.shape[0] != len(images):
        raise ValueError(f"embed returned {e.shape[0]} rows for {len(images)} images")
    return e


def lookahead_embeddings(images: np.ndarray, embed: Callable, *, lookahead: int,
                         vary: Callable | None = None) -> np.ndarray:
    """The candidates' voting embeddings [N, d] (float64).

    ``lookahead`` 0: ``embed(images)``; k >= 1: the mean of ``embed(vary(images))`` over k
    calls of ``vary`` (a variation API bound to the iteration's strength and public
    randomness), i.e. where each candidate's variations land on average (the paper's
    lookahead).  Public inputs only.
    """
    k = _check_int("lookahead", lookahead, 0)
    if k == 0:
        return _embed(embed, images)
    if vary is None:
        raise ValueError("lookahead >= 1 needs a variation function (vary=)")
    total = _embed(embed, vary(images)).copy()  # never add into the caller's array
    for _ in range(k - 1):
        total += _embed(embed, vary(images))
    return total / k


def _nearest(private: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the L2-nearest candidate of every private row (ties: the lowest index).

    Exact squared differences (no |a|^2 - 2ab + |b|^2 cancellation), in chunks of private
    rows so that memory stays near 32 MB whatever n.
    """
    rows = max(1, (1 << 22) // (candidates.shape[0] * candidates.shape[1]))
    out = np.empty(private.shape[0], dtype=np.int64)
    for lo in range(0, private.shape[0], rows):
        diff = private[lo:lo + rows, None, :] - candidates[None, :, :]
        out[lo:lo + rows] = np.argmin(np.einsum("ijk,ijk->ij", diff, diff), axis=1)
    return out


def vote_histogram(private_embeddings, candidate_embeddings) -> np.ndarray:
    """THE NOISE-FREE HISTOGRAM (private): votes per candidate, int64 [N], summing to n.

    Every private row votes once, for its L2-nearest candidate embedding (ties: the lowest
    index).  One row added or removed changes the result by one vote (L2 sensitivity 1),
    one row replaced by at most one vote moved (sqrt 2) -- for any candidates, which must not
    depend on the private data.  Zero private rows give all zeros.
    """
    p = _as_matrix("private_embeddings", private_embeddings, min_rows=0)
    c = _as_matrix("candidate_embeddings", candidate_embeddings)
    if p.shape[1] != c.shape[1]:
        raise ValueError(f"private embeddings have dim {p.shape[1]}, candidates dim {c.shape[1]}")
    return np.bincount(_nearest(p, c), minlength=c.shape[0]).astype(np.int64)


def noisy_histogram(counts, *, sigma: float, threshold: float, rng: np.random.Generator):
    """THE DP RELEASE of one iteration: (noisy counts, thresholded weights), float64 [N] each.

    noisy = counts + N(0, sigma^2 I), the Gaussian drawn from ``rng`` (the noise source's
    ``numpy_rng(f"pe-histogram-{t}")`` in the pipeline); weights = max(noisy - threshold, 0)
    (post-processing).  Both are safe to publish; ``counts`` is not.  sigma = 0 adds nothing
    (a non-private reference).  The privacy audit calls this very function.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError(f"counts must be a finite, non-empty 1-D array, got shape {c.shape}")
    s = _check_nonnegative("sigma", sigma)
    h = _check_nonnegative("threshold", threshold)
    noisy = c + s * rng.standard_normal(c.size)
    return noisy, np.maximum(noisy - h, 0.0)


def resample(weights, size: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``size`` candidate indices drawn with replacement in proportion to ``weights``.

    Returns (indices int64, uniform_fallback): when every weight is 0 the draw is uniform and
    the flag is True.  ``rng`` is public randomness (post-processing of a DP release).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be a non-empty 1-D array of finite values >= 0")
    n = _check_int("size", size, 1)
    total = w.sum()
    if total <= 0:
        return rng.integers(0, w.size, size=n).astype(np.int64), True
    return rng.choice(w.size, size=n, p=w / total).astype(np.int64), False


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------
def _cpu_generator(seed: int, *labels):
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, *labels))


def private_evolution(private_embeddings, *, unet, scheduler, embed: Callable, params: PEParams,
                      sigma: float, noise_source, seed: int, device="cpu", batch_size: int = 64,
                      desc: str = "private_evolution") -> tuple[np.ndarray, list[dict]]:
    """Run Algorithm 1; returns (S_T as uint8 NHWC [N, H, W, C], per-iteration statistics).

    ``private_embeddings`` [n, d]: the private set in the space of ``embed`` (uint8 NHWC ->
    float [N, d]; public-only, see the module docstring).  ``sigma``: the per-iteration noise
    std, :func:`dpdeepsets.privacy.pe_histogram_sigma` (0 = non-private reference).
    ``noise_source``: a :class:`dpdeepsets.noise.NoiseSource`.  ``seed``: public randomness
    (S_0 is ``ddim_sample(seed=seed)``).

    The statistics (one dict per iteration, all post-processing of the noisy histograms, safe
    to publish and logged at INFO): iteration, strength, bins_above_threshold (bins with a
    positive weight), uniform_fallback, distinct_parents, parents (the resampled candidate
    indices, a list of N ints).
    """
    priv = _as_matrix("private_embeddings", private_embeddings, min_rows=0)
    if not isinstance(params, PEParams):
        raise TypeError(f"params must be a PEParams, got {type(params).__name__}")
    sigma = _check_nonnegative("sigma", sigma)
    bs = _check_int("batch_size", batch_size, 1)
    n_pop, k = params.population, params.lookahead
    log.info("%s: N=%d, T=%d, H=%g, lookahead=%d, strengths %s, sigma=%g, noise %s",
             desc, n_pop, params.iterations, params.threshold, k,
             np.round(params.strengths(), 4).tolist(), sigma, noise_source.kind)

    def vary(images, *, strength, generator, label):
        return variation_api(images, unet, scheduler, strength=strength, steps=params.variation_steps,
                             generator=generator, batch_size=bs, device=device, desc=f"{desc} {label}")

    population = random_api(unet, scheduler, num_samples=n_pop, steps=params.random_steps, seed=seed,
                            batch_size=bs, device=device, desc=f"{desc} random")
    stats = []
    for t, strength in enumerate(tqdm(params.strengths(), desc=desc, unit="iteration"), start=1):
        started = time.perf_counter()
        look = partial(vary, strength=strength, generator=_cpu_generator(seed, "pe-lookahead", t),
                       label="lookahead")
        emb = lookahead_embeddings(population, embed, lookahead=k, vary=look)
        _, weights = noisy_histogram(vote_histogram(priv, emb), sigma=sigma, threshold=params.threshold,
                                     rng=noise_source.numpy_rng(f"pe-histogram-{t}"))
        parents, uniform = resample(weights, n_pop, np.random.default_rng(derive_seed(seed, "pe-resample", t)))
        population = vary(population[parents], strength=strength,
                          generator=_cpu_generator(seed, "pe-variation", t), label="variation")
        stats.append(_iteration_stats(t, strength, weights, parents, uniform, time.perf_counter() - started))
    return population, stats


def _iteration_stats(t: int, strength: float, weights: np.ndarray, parents: np.ndarray, uniform: bool,
                     seconds: float) -> dict:
    """Public statistics of one iteration (from the noisy weights only), logged at INFO with
    the iteration's wall time (not returned, so the statistics stay deterministic)."""
    s = {"iteration": t, "strength": float(strength), "bins_above_threshold": int(np.count_nonzero(weights)),
         "uniform_fallback": bool(uniform), "distinct_parents": int(np.unique(parents).size),
         "parents": parents.tolist()}
    log.info("PE iteration %d: strength %.4f, %d of %d bins above threshold, %d distinct parents%s, %.1f s",
             t, strength, s["bins_above_threshold"], weights.size, s["distinct_parents"],
             " (no bin above threshold: uniform draw)" if uniform else "", seconds)
    return s


# --------------------------------------------------------------------------
# the pipeline's glue: knobs from the config, the ledger entry
# --------------------------------------------------------------------------
KNOBS = ("population", "iterations", "threshold", "lookahead", "strength_start", "strength_end",
         "schedule", "random_steps", "variation_steps")
MECHANISM = "pe_vote_histogram"  # the ledger's name of the T composed histogram releases


def params_for(section: dict, epsilon: float, ddim_steps: int, num_samples: int) -> tuple[PEParams, str]:
    """The knobs of one cell: the ``private_evolution`` config section's values, overridden by
    its ``tuned`` entry for ``epsilon`` (chosen on public proxy sets); step counts left null
    take ``sampling.ddim_steps``, a null population ``sampling.num_samples``. Returns (params,
    where the values came from)."""
    values = {k: section[k] for k in KNOBS}
    source = "private_evolution defaults"
    for entry in section.get("tuned") or []:
        if float(entry["epsilon"]) == float(epsilon):
            values.update({k: entry[k] for k in KNOBS if k in entry})
            source = f"private_evolution.tuned ({entry.get('provenance', 'tune_baselines')})"
            break
    for k in ("random_steps", "variation_steps"):
        if values[k] is None:
            values[k] = int(ddim_steps)
    if values["population"] is None:
        values["population"] = int(num_samples)
    return PEParams(**values), source


def ledger_entry(*, pset: str, seed: int, epsilon: float, delta: float, adjacency: str, n: int,
                 params: PEParams, noise, source: str) -> dict:
    """The privacy-ledger entry of one PE cell: T Gaussian histogram releases of sensitivity D
    and std sigma, recorded as the equivalent single Gaussian release (sensitivity sqrt(T) D,
    the same sigma; :func:`dpdeepsets.privacy.compose_ledger` composes it as such), the
    accounted epsilon from Gaussian DP, and every public knob. No seed, no count."""
    from . import privacy as P

    sigma = P.pe_histogram_sigma(epsilon, delta, params.iterations, adjacency)
    per_iteration = P.PE_HISTOGRAM_SENSITIVITY[adjacency]
    sens = math.sqrt(params.iterations) * per_iteration
    private = math.isfinite(epsilon) and bool(noise.private)
    entry = {"pset": pset, "replicate": int(seed), "method": "private_evolution", "n": int(n),
             "epsilon": float(epsilon), "delta": float(delta), "adjacency": adjacency,
             "mechanism": MECHANISM, "private": private, **noise.ledger(),
             "sigma": float(sigma), "sensitivity": float(sens),
             "per_iteration_sensitivity": float(per_iteration),
             "accounted_epsilon": (float(P.gdp_epsilon(sens / sigma, delta)) if sigma > 0 else math.inf),
             "accountant": "gdp (T composed Gaussian histograms)", "hyperparameters": source,
             **{k: getattr(params, k) for k in KNOBS}}
    return entry
