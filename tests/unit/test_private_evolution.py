"""Private Evolution (dpdeepsets.private_evolution) on the tiny seeded 16-px UNet.

The UNet is untrained, so its samples are noise-like; what is tested is the algorithm: the
two APIs, the vote, the noisy release, the resampling and the loop (determinism, the noise
purposes, and that the private embeddings steer the population).
"""

import numpy as np
import pytest
import torch

from dpdeepsets import noise as N
from dpdeepsets import private_evolution as PE

SEED = 11
STEPS = 6  # DDIM steps of both APIs: tiny, the algorithm does not care


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many tiny UNet calls: extra threads only add synchronisation on a busy machine."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def embed(images):
    """Pixels in [0, 1], 4x4 average-pooled: a 16-dim public embedding of a 16-px image."""
    x = images.astype(np.float64)[..., 0] / 255.0
    return x.reshape(len(x), 4, 4, 4, 4).mean(axis=(2, 4)).reshape(len(x), 16)


def params(**over):
    base = dict(population=6, iterations=1, threshold=0.0, lookahead=0, strength_start=0.6,
                strength_end=0.2, random_steps=STEPS, variation_steps=STEPS)
    return PE.PEParams(**(base | over))


def run(tiny_unet, private, noise_source=None, **over):
    unet, sched = tiny_unet
    sigma = over.pop("sigma", 0.01)
    seed = over.pop("seed", SEED)
    return PE.private_evolution(private, unet=unet, scheduler=sched, embed=embed, params=params(**over),
                                sigma=sigma, noise_source=noise_source or N.PublicSeedNoise(0), seed=seed,
                                batch_size=4)


@pytest.fixture(scope="module")
def initial(tiny_unet):
    """S_0 of a run with seed SEED and population 6 (the random API's samples)."""
    unet, sched = tiny_unet
    return PE.random_api(unet, sched, num_samples=6, steps=STEPS, seed=SEED, batch_size=4)


def mean_abs_diff(a, b):
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


# --------------------------------------------------------------------------- schedule and knobs
def test_strength_schedules_decrease_from_start_to_end():
    g = PE.strength_schedule(0.8, 0.1, 4, "geometric")
    assert g[0] == pytest.approx(0.8) and g[-1] == pytest.approx(0.1)
    assert np.allclose(g[1:] / g[:-1], (0.1 / 0.8) ** (1 / 3))
    assert np.allclose(PE.strength_schedule(0.8, 0.2, 4, "linear"), [0.8, 0.6, 0.4, 0.2])
    assert PE.strength_schedule(0.5, 0.1, 1).tolist() == [0.5]
    assert np.allclose(PE.strength_schedule(0.3, 0.3, 3), 0.3)


@pytest.mark.parametrize("args,match", [
    ((0.0, 0.0, 3), "strength start"), ((1.2, 0.1, 3), "strength start"), ((0.5, 0.0, 3), "strength end"),
    ((0.2, 0.5, 3), "must not increase"), ((0.5, 0.1, 0), "iterations"), ((float("nan"), 0.1, 3), "strength"),
])
def test_strength_schedule_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        PE.strength_schedule(*args)


@pytest.mark.parametrize("over,match", [
    (dict(population=0), "population"), (dict(iterations=0), "iterations"),
    (dict(iterations=2.0), "iterations"), (dict(threshold=-1.0), "threshold"),
    (dict(threshold=float("inf")), "threshold"), (dict(lookahead=-1), "lookahead"),
    (dict(strength_start=1.5), "strength start"), (dict(strength_end=0.0), "strength end"),
    (dict(random_steps=0), "random_steps"), (dict(variation_steps=0), "variation_steps"),
    (dict(schedule="cosine"), "schedule"), (dict(population=True), "population"),
])
def test_params_refuse_bad_values(over, match):
    with pytest.raises(ValueError, match=match):
        params(**over)


def test_params_are_frozen():
    p = params()
    with pytest.raises(AttributeError):
        p.population = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- the two APIs
def test_random_api_gives_uint8_images_determined_by_the_seed(tiny_unet, initial):
    unet, sched = tiny_unet
    assert initial.shape == (6, 16, 16, 1) and initial.dtype == np.uint8
    again = PE.random_api(unet, sched, num_samples=6, steps=STEPS, seed=SEED, batch_size=6)
    other = PE.random_api(unet, sched, num_samples=6, steps=STEPS, seed=SEED + 1, batch_size=6)
    assert np.array_equal(initial, again)
    assert mean_abs_diff(initial, other) > 20


def test_sdedit_timesteps_start_at_the_largest_grid_step_below_t_v(tiny_unet):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(tiny_unet[1].config)
    ddim.set_timesteps(10)  # 900, 800, ..., 0
    assert PE.sdedit_timesteps(ddim, 1.0, 1000).tolist() == list(range(900, -1, -100))
    assert PE.sdedit_timesteps(ddim, 0.5, 1000).tolist() == list(range(500, -1, -100))
    assert PE.sdedit_timesteps(ddim, 0.47, 1000).tolist() == list(range(400, -1, -100))
    assert PE.sdedit_timesteps(ddim, 0.01, 1000).tolist() == [0]
    with pytest.raises(ValueError, match="strength"):
        PE.sdedit_timesteps(ddim, 0.0, 1000)


def vary(tiny_unet, images, strength, seed=0, batch_size=4):
    unet, sched = tiny_unet
    return PE.variation_api(images, unet, sched, strength=strength, steps=STEPS,
                            generator=torch.Generator().manual_seed(seed), batch_size=batch_size)


def test_variation_keeps_the_image_at_small_strength_and_not_at_strength_one(tiny_unet, initial):
    diffs = {s: mean_abs_diff(vary(tiny_unet, initial, s), initial) for s in (0.01, 0.3, 1.0)}
    assert diffs[0.01] < 2.0  # out of 255
    assert diffs[0.01] < diffs[0.3] < diffs[1.0]
    assert diffs[1.0] > 50


def test_variation_depends_on_the_generator_only(tiny_unet, initial):
    a = vary(tiny_unet, initial, 0.5, seed=3, batch_size=1)
    b = vary(tiny_unet, initial, 0.5, seed=3, batch_size=4)
    c = vary(tiny_unet, initial, 0.5, seed=4, batch_size=4)
    assert a.shape == initial.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batch size changes nothing
    assert mean_abs_diff(b, c) > 5


def test_variation_refuses_a_strength_outside_0_1(tiny_unet, initial):
    for s in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="strength"):
            vary(tiny_unet, initial, s)


# --------------------------------------------------------------------------- lookahead
def test_lookahead_is_the_mean_embedding_of_k_variations(initial):
    calls = []

    def fake_vary(images):
        calls.append(len(calls))
        return np.clip(images.astype(int) + 10 * len(calls), 0, 255).astype(np.uint8)

    e = PE.lookahead_embeddings(initial, embed, lookahead=3, vary=fake_vary)
    want = np.mean([embed(np.clip(initial.astype(int) + 10 * i, 0, 255).astype(np.uint8))
                    for i in (1, 2, 3)], axis=0)
    assert len(calls) == 3 and np.allclose(e, want)
    assert np.array_equal(PE.lookahead_embeddings(initial, embed, lookahead=0), embed(initial))
    with pytest.raises(ValueError, match="vary"):
        PE.lookahead_embeddings(initial, embed, lookahead=1)


def test_lookahead_with_the_real_variation_at_small_strength_is_near_the_own_embedding(tiny_unet, initial):
    e = PE.lookahead_embeddings(initial, embed, lookahead=2, vary=lambda x: vary(tiny_unet, x, 0.01))
    far = PE.lookahead_embeddings(initial, embed, lookahead=2, vary=lambda x: vary(tiny_unet, x, 1.0))
    own = embed(initial)
    assert np.abs(e - own).max() < 0.02 < np.abs(far - own).max()


# --------------------------------------------------------------------------- the vote and its release
def brute_force_votes(priv, cand):
    d = np.array([[np.linalg.norm(p - c) for c in cand] for p in priv])
    return np.bincount(d.argmin(axis=1), minlength=len(cand))


@pytest.mark.parametrize("n,n_cand,dim", [(50, 7, 5), (100, 1000, 100), (3, 1, 2)])
def test_every_example_votes_for_its_nearest_candidate(n, n_cand, dim):
    rng = np.random.default_rng(n)
    priv, cand = rng.standard_normal((n, dim)), rng.standard_normal((n_cand, dim))
    h = PE.vote_histogram(priv, cand)  # (100, 1000, 100) runs in several chunks
    assert h.dtype == np.int64 and h.shape == (n_cand,) and h.sum() == n
    assert np.array_equal(h, brute_force_votes(priv, cand))


def test_vote_ties_go_to_the_lowest_index_and_empty_sets_vote_nothing():
    cand = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert PE.vote_histogram(np.zeros((4, 2)), cand).tolist() == [4, 0, 0]
    assert PE.vote_histogram(np.array([[2.0, 0.0]]), cand).tolist() == [1, 0, 0]
    assert PE.vote_histogram(np.zeros((0, 2)), cand).tolist() == [0, 0, 0]


def test_vote_refuses_mismatched_or_non_finite_embeddings():
    with pytest.raises(ValueError, match="dim"):
        PE.vote_histogram(np.zeros((3, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        PE.vote_histogram(np.full((3, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="candidate_embeddings"):
        PE.vote_histogram(np.zeros((3, 2)), np.zeros((0, 2)))


def test_noisy_release_adds_exactly_the_sources_gaussian_then_thresholds():
    counts = np.array([0, 3, 1, 7, 0, 2])
    src = N.PublicSeedNoise(5)
    noisy, weights = PE.noisy_histogram(counts, sigma=2.5, threshold=1.5, rng=src.numpy_rng("pe-histogram-1"))
    z = src.numpy_rng("pe-histogram-1").standard_normal(6)
    assert np.allclose(noisy, counts + 2.5 * z, rtol=0, atol=1e-12)
    assert np.array_equal(weights, np.maximum(noisy - 1.5, 0.0))
    assert np.any(weights == 0) and np.any(weights > 0)


def test_noisy_release_with_sigma_0_and_threshold_0_is_the_histogram():
    counts = np.array([0, 3, 1, 7])
    noisy, weights = PE.noisy_histogram(counts, sigma=0.0, threshold=0.0, rng=np.random.default_rng(0))
    assert np.array_equal(noisy, counts) and np.array_equal(weights, counts)
    _, w = PE.noisy_histogram(counts, sigma=0.0, threshold=2.0, rng=np.random.default_rng(0))
    assert w.tolist() == [0, 1, 0, 5]  # Algorithm 2: max(h - H, 0)


@pytest.mark.parametrize("kw,match", [
    (dict(sigma=-1.0), "sigma"), (dict(sigma=float("nan")), "sigma"), (dict(threshold=-0.5), "threshold"),
    (dict(counts=np.zeros((2, 2))), "counts"), (dict(counts=np.array([])), "counts"),
])
def test_noisy_release_refuses_bad_arguments(kw, match):
    args = dict(counts=np.array([1, 2]), sigma=1.0, threshold=0.0, rng=np.random.default_rng(0)) | kw
    with pytest.raises(ValueError, match=match):
        PE.noisy_histogram(**args)


def test_resample_follows_the_weights_and_falls_back_to_uniform():
    idx, uniform = PE.resample(np.array([0.0, 3.0, 0.0, 1.0]), 4000, np.random.default_rng(0))
    assert not uniform and set(idx.tolist()) == {1, 3}
    assert abs(np.mean(idx == 1) - 0.75) < 0.03
    idx, uniform = PE.resample(np.zeros(5), 4000, np.random.default_rng(0))
    assert uniform and set(idx.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="weights"):
        PE.resample(np.array([1.0, -1.0]), 3, np.random.default_rng(0))


# --------------------------------------------------------------------------- the loop
def pulled_to(initial, target, copies=20):
    """Private embeddings sitting on candidate ``target`` of S_0."""
    e = embed(initial)[target]
    return e + 1e-4 * np.random.default_rng(target).standard_normal((copies, e.size))


def test_private_votes_pull_the_population_to_the_voted_candidate(tiny_unet, initial):
    # sigma 0.01, H 0.5: only the voted bin survives the threshold, so every parent is it
    pop1, stats1 = run(tiny_unet, pulled_to(initial, 1), sigma=0.01, threshold=0.5)
    pop4, stats4 = run(tiny_unet, pulled_to(initial, 4), sigma=0.01, threshold=0.5)
    assert stats1[0]["parents"] == [1] * 6 and stats4[0]["parents"] == [4] * 6
    assert stats1[0]["bins_above_threshold"] == 1 and stats1[0]["distinct_parents"] == 1
    assert not stats1[0]["uniform_fallback"]
    assert mean_abs_diff(pop1, pop4) > 10
    # S_1 = variations (strength 0.6) of copies of candidate 1: closer to it than to candidate 4
    assert mean_abs_diff(pop1, initial[[1] * 6]) < mean_abs_diff(pop1, initial[[4] * 6])


def test_population_has_n_images_and_stats_are_public_summaries(tiny_unet, initial):
    pop, stats = run(tiny_unet, pulled_to(initial, 2), iterations=2, lookahead=1, sigma=1.0)
    assert pop.shape == (6, 16, 16, 1) and pop.dtype == np.uint8
    assert [s["iteration"] for s in stats] == [1, 2]
    assert [s["strength"] for s in stats] == pytest.approx(params(iterations=2).strengths().tolist())
    assert set(stats[0]) == {"iteration", "strength", "bins_above_threshold", "uniform_fallback",
                             "distinct_parents", "parents"}
    assert all(len(s["parents"]) == 6 and 0 <= min(s["parents"]) and max(s["parents"]) < 6 for s in stats)


def test_run_is_deterministic_given_noise_source_and_seed(tiny_unet, initial):
    key = bytes(range(32))
    src = lambda: N.KeyedNoise(key, N.cell_identity(method="pe", epsilon=1.0))  # noqa: E731
    priv = pulled_to(initial, 3)
    a = run(tiny_unet, priv, src(), iterations=2, lookahead=1, sigma=3.0)
    b = run(tiny_unet, priv, src(), iterations=2, lookahead=1, sigma=3.0)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    other_seed = run(tiny_unet, priv, src(), iterations=2, lookahead=1, sigma=3.0, seed=SEED + 1)
    assert not np.array_equal(a[0], other_seed[0])


def test_the_histogram_noise_is_keyed_per_iteration(tiny_unet, initial):
    class Spy(N.PublicSeedNoise):
        def __init__(self, seed):
            super().__init__(seed)
            self.purposes = []

        def numpy_rng(self, purpose="gaussian"):
            self.purposes.append(purpose)
            return super().numpy_rng(purpose)

    spy = Spy(0)
    run(tiny_unet, pulled_to(initial, 0), spy, iterations=3, sigma=1.0)
    assert spy.purposes == ["pe-histogram-1", "pe-histogram-2", "pe-histogram-3"]
    keyed = N.KeyedNoise(bytes(32), N.cell_identity(method="pe"))
    draws = [keyed.numpy_rng(p).standard_normal(8) for p in spy.purposes]
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])


def test_different_noise_changes_the_selection(tiny_unet, initial):
    priv = np.vstack([pulled_to(initial, i, copies=3) for i in range(6)])  # 3 votes per bin
    parents = {tuple(run(tiny_unet, priv, N.PublicSeedNoise(s), sigma=3.0)[1][0]["parents"]) for s in range(4)}
    assert len(parents) > 1


def test_no_bin_above_threshold_draws_uniformly_and_says_so(tiny_unet, initial):
    _, stats = run(tiny_unet, pulled_to(initial, 1), sigma=0.0, threshold=100.0)
    assert stats[0]["uniform_fallback"] and stats[0]["bins_above_threshold"] == 0


def test_loop_refuses_bad_arguments(tiny_unet, initial):
    with pytest.raises(ValueError, match="sigma"):
        run(tiny_unet, pulled_to(initial, 1), sigma=-1.0)
    with pytest.raises(ValueError, match="dim"):
        run(tiny_unet, np.zeros((4, 3)))
    unet, sched = tiny_unet
    with pytest.raises(TypeError, match="PEParams"):
        PE.private_evolution(np.zeros((2, 16)), unet=unet, scheduler=sched, embed=embed, params={},
                             sigma=1.0, noise_source=N.PublicSeedNoise(0), seed=0)
