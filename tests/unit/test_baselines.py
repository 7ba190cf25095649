"""The gradient-based fits (dpdeepsets.baselines): per-sample gradients, the DP-SGD loop, PDA-DPMD.

The per-sample-gradient tests run opacus on the real LoRA-UNet (a diffusers UNet2DModel
with attention, LoRA on the attention projections and on the resnet convs after attention,
as in lora.target_modules' default) and compare with per-example autograd. opacus 1.6's
``hooks`` conv grad sampler is wrong for channels_last conv inputs, which diffusers'
attention blocks emit; the pipeline's mode (``baselines.grad_sample_mode`` default) must be
exact, and the same comparison must fail for ``hooks`` (so the test can catch the trap).
"""

import copy
import math
import warnings

import pytest
import torch

from dpdeepsets import baselines as D
from dpdeepsets import lora as L
from dpdeepsets import methods as M
from dpdeepsets import noise as N
from dpdeepsets.config import load_config

# the schema defaults: the pattern set (attention projections + resnet convs after attention)
LORA_DEFAULTS = load_config(None)["lora"]
BASELINE_DEFAULTS = load_config(None)["baselines"]
RANK = 2
B, K = 3, 2


@pytest.fixture(scope="module")
def setup(tiny_unet):
    unet, sched = tiny_unet
    targets = L.find_targets(unet, LORA_DEFAULTS["target_modules"], RANK)
    basis = L.make_basis(targets, RANK, 0)
    gen = torch.Generator().manual_seed(1)
    b0 = {t.name: 0.1 * torch.randn(t.out_features, RANK, generator=gen) for t in targets}
    x0 = torch.rand(B, 1, 16, 16, generator=gen) * 2 - 1
    t, noise = D.draw_multiplicity(B, K, (1, 16, 16), 1000, gen)
    return unet, sched, targets, basis, b0, (x0, t, noise)


def _model(setup, par):
    unet, _, targets, basis, b0, _ = setup
    return D.build_lora_unet(copy.deepcopy(unet), targets, basis, b0, rank=RANK, alpha=RANK,
                             parametrisation=par)


def _reference(setup, par):
    """Per-example gradients of the per-example objective (mean over K draws), by a loop."""
    _, sched, *_, (x0, t, noise) = setup
    m = _model(setup, par)
    params = D.trainable(m)
    per = [torch.autograd.grad(D.example_losses(m, sched, x0[i:i + 1], t[i:i + 1],
                                                noise[i:i + 1]).sum(), params) for i in range(B)]
    return [torch.stack(g) for g in zip(*per)]


def _opacus(setup, par, mode):
    """What the pipeline does: opacus grad samples of the row loss, folded over K."""
    from opacus import GradSampleModule

    _, sched, *_, (x0, t, noise) = setup
    m = _model(setup, par).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(m, loss_reduction="mean", force_functorch=mode == "functorch")
        D.row_losses(gsm, sched, x0, t, noise).mean().backward()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    params = D.trainable(m)
    D.fold_multiplicity(params, B, K)
    return names, [p.grad_sample for p in params]


def _errors(setup, par, mode):
    ref = _reference(setup, par)
    names, got = _opacus(setup, par, mode)
    assert [g.shape for g in got] == [r.shape for r in ref]
    return {n: float((g - r).norm() / r.norm()) for n, g, r in zip(names, got, ref)}


@pytest.mark.parametrize("par", ["gauge_fixed", "full"])
def test_pipeline_mode_per_sample_gradients_are_exact(setup, par):
    mode = BASELINE_DEFAULTS["grad_sample_mode"]
    assert mode in D.EXACT_GRAD_SAMPLE_MODES
    err = _errors(setup, par, mode)
    assert max(err.values()) < 1e-4, sorted(err.items(), key=lambda kv: -kv[1])[:3]
    # the comparison is not vacuous: convs right after attention blocks are LoRA targets
    assert any("resnets" in n and "conv" in n for n in err)


def test_hooks_mode_is_wrong_for_convs_after_attention(setup):
    """opacus 1.6 'hooks' gives wrong per-sample gradients here, silently."""
    err = _errors(setup, "gauge_fixed", "hooks")
    bad = {n for n, e in err.items() if e > 1e-2}
    assert bad, "hooks mode matched autograd: the channels_last trap did not reproduce"
    # only conv LoRA factors are affected (linear grad samplers are layout-independent)
    assert all(".conv" in n for n in bad), bad
    assert all(e < 1e-4 for n, e in err.items() if ".to_" in n)


def test_channels_last_is_the_cause(setup):
    """The conv inputs after attention really are channels_last (what breaks unfold2d)."""
    m = _model(setup, "gauge_fixed")
    _, sched, *_, (x0, t, noise) = setup
    seen = {}

    def hook(name):
        def f(mod, inp, out):
            seen[name] = inp[0].is_contiguous()
        return f

    for name, layer in m.layers().items():
        layer.lora_B.register_forward_hook(hook(name))
    with torch.no_grad():
        D.row_losses(m, sched, x0, t, noise)
    assert any(not c for c in seen.values())


def test_module_lora_layer_matches_grouped_lora_layer(setup):
    """ModuleLoRALayer (peft layout) computes what GroupedLoRALayer computes with one group."""
    unet, sched, targets, basis, b0, (x0, t, noise) = setup
    m = _model(setup, "gauge_fixed")
    u2 = copy.deepcopy(unet)
    layers = L.attach(u2, targets, basis, 1.0)
    L.set_b(layers, {k: v[None] for k, v in b0.items()})
    tt = t[:, 0]
    xt = sched.add_noise(x0, noise[:, 0], tt)
    with torch.no_grad():
        assert torch.allclose(m(xt, tt), u2(xt, tt).sample, atol=1e-5)


KEY = bytes(range(32))


def _hyper(**kw):
    values = dict(steps=4, batch_size=8, lr=0.05, momentum=0.9, max_grad_norm=1.0,
                  noise_multiplicity=2, optimizer="sgd")
    return D.Hyper(**{**values, **kw})


def _noise(**cell):
    return N.KeyedNoise(KEY, N.cell_identity(**({"method": "dpsgd", "pset": "p0", "epsilon": 2.0,
                                                 "seed": 0} | cell)))


@pytest.fixture(scope="module")
def images():
    from dpdeepsets.privacy_audit.dpsgd import smooth_blobs

    return smooth_blobs(24)


def _fit(setup, images, method="dpsgd", *, hyper=None, epsilon=2.0, noise=None, accountant="auto",
         init=None, public_images=None, alpha_fn=D.alpha_schedule, n=24):
    unet, sched, targets, basis, *_ = setup
    hyper = hyper or _hyper()
    m = M.get(method) if isinstance(method, str) else method
    plan = None
    if m.privacy == "dp_sgd":
        plan = D.plan_dp(hyper, n=n, epsilon=epsilon, delta=1e-5, accountant=accountant,
                         prv_max_epsilon=64)
        noise = noise or _noise(method=m.name, epsilon=epsilon)
    return D.fit_lora(copy.deepcopy(unet), sched, targets, images, method=m, hyper=hyper,
                      rank=RANK, alpha=RANK, parametrisation="gauge_fixed", basis=basis,
                      init=init, dp=plan, noise=noise if plan else None,
                      public_images=public_images, public_batch_size=8, alpha_fn=alpha_fn,
                      draws_seed=0)


def _flat(res):
    return torch.cat([res.b[k].flatten() for k in sorted(res.b)])


@pytest.mark.parametrize("accountant,batch", [("prv", 8), ("rdp", 8), ("auto", 24)])
def test_accounted_epsilon_within_target(setup, images, accountant, batch):
    res = _fit(setup, images, hyper=_hyper(batch_size=batch), accountant=accountant)
    p = res.privacy
    assert p["accounted_epsilon"] <= 2.0 and p["accounted_epsilon"] > 1.0
    assert p["steps"] == 4 and p["sample_rate"] == pytest.approx(min(1.0, batch / 24))
    assert p["accountant"] == ("gdp" if batch == 24 else accountant)
    entry = D.ledger_entry(method="dpsgd", pset="p0", seed=0, epsilon=2.0, delta=1e-5, n=24,
                           dim=10, hyper=_hyper(), parametrisation="gauge_fixed", privacy=p,
                           noise=_noise())
    assert entry["mechanism"].startswith("dp-sgd") and entry["private"] is True
    assert entry["adjacency"] == "add_remove" and entry["noise_source"] == "keyed"
    assert not any("seed" == k or "loss" in k for k in entry if k != "seed")
    assert entry["sigma"] == p["noise_multiplier"] and entry["accounted_epsilon"] <= entry["epsilon"]


def test_dp_fit_is_reproducible_with_the_key_and_independent_across_cells(setup, images):
    """Same key and cell: the same LoRA. Another cell (set, epsilon, method) or key: other
    noise and other Poisson batches, so every cell has its own noise stream."""
    a = _fit(setup, images)
    b = _fit(setup, images)
    assert torch.equal(_flat(a), _flat(b))
    for other in (_noise(pset="p1"), _noise(seed=1), N.KeyedNoise(bytes(32), N.cell_identity(
            method="dpsgd", pset="p0", epsilon=2.0, seed=0))):
        c = _fit(setup, images, noise=other)
        assert not torch.equal(_flat(a), _flat(c))


def test_secure_mode_runs_without_torchcsprng(setup, images):
    """privacy.noise=secure: fresh OS entropy per fit and opacus' 4-draw noise; no torchcsprng."""
    a = _fit(setup, images, noise=N.SecureNoise())
    b = _fit(setup, images, noise=N.SecureNoise())
    assert a.privacy["accounted_epsilon"] <= 2.0
    assert not torch.equal(_flat(a), _flat(b))


def test_dp_fit_depends_on_its_data(setup, images):
    """At a large epsilon the DP-SGD LoRA of one set differs from another set's by more than
    the noise alone moves it (two noise draws on the same data): the output carries signal.
    (On this tiny random UNet per-example gradients have norm ~0.3, so the clip norm 1 does
    not bind and the noise, z C / batch per coordinate, only falls below the signal at a
    large epsilon.)"""
    hyper = _hyper(steps=6, batch_size=24, noise_multiplicity=1, lr=0.5)
    blocks = torch.randn(24, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    other_images = 0.8 * torch.nn.functional.interpolate(blocks, size=16, mode="nearest").sign()
    same = [_fit(setup, images, hyper=hyper, epsilon=16384.0, noise=_noise(seed=s)) for s in (0, 1)]
    other = _fit(setup, other_images, hyper=hyper, epsilon=16384.0, noise=_noise(seed=0))
    noise_gap = float((_flat(same[0]) - _flat(same[1])).norm())
    data_gap = float((_flat(same[0]) - _flat(other)).norm())
    assert data_gap > 2 * noise_gap, (data_gap, noise_gap)


def test_dp_fit_approaches_the_nonprivate_fit_as_epsilon_grows(setup, images):
    """The sanity test of the comparison: with the same hyperparameters, the DP-SGD LoRA moves
    towards the non-private one as epsilon grows (the noise vanishes; clipping stays)."""
    hyper = _hyper(steps=6, batch_size=24, noise_multiplicity=1, lr=0.5)  # clip 1 > grad norms
    ref = _flat(_fit(setup, images, "nonprivate", hyper=hyper))
    gaps = [float((_flat(_fit(setup, images, hyper=hyper, epsilon=e)) - ref).norm())
            for e in (16.0, 1024.0, 2.0**20)]
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert gaps[2] < 0.05 * float(ref.norm()), (gaps, float(ref.norm()))


def test_alpha_schedule():
    T = 8
    got = [D.alpha_schedule(t, T) for t in range(T + 1)]
    assert got[0] == 1.0 and got[-1] == pytest.approx(0.0, abs=1e-12)
    assert got == pytest.approx([math.cos(math.pi * t / (2 * T)) for t in range(T + 1)])
    assert all(a > b for a, b in zip(got, got[1:]))


def test_pda_dpmd_with_alpha_one_is_dpsgd(setup, images):
    """With alpha = 1 the public gradient gets weight 0: exactly DP-SGD from the same start."""
    _, _, _, basis, b0, _ = setup
    init = (basis, {k: 0.1 * v for k, v in b0.items()})
    noise = _noise(method="x")
    ft = _fit(setup, images, "public_ft_dpsgd", init=init, noise=noise)
    one = _fit(setup, images, "pda_dpmd", init=init, noise=noise, public_images=images.flip(0),
               alpha_fn=lambda t, T: 1.0)
    cos = _fit(setup, images, "pda_dpmd", init=init, noise=noise, public_images=images.flip(0))
    for k in ft.b:
        assert torch.equal(ft.b[k], one.b[k]), k
    assert any(not torch.equal(ft.b[k], cos.b[k]) for k in ft.b)
    assert ft.privacy["accounted_epsilon"] == one.privacy["accounted_epsilon"]


def test_nonprivate_fit_reduces_the_loss(setup, images):
    unet, sched, targets, basis, *_ = setup
    gen = torch.Generator().manual_seed(9)
    t, noise = D.draw_multiplicity(24, 4, (1, 16, 16), 1000, gen)
    with torch.no_grad():
        start = D.build_lora_unet(copy.deepcopy(unet), targets, basis, None, rank=RANK,
                                  alpha=RANK, parametrisation="gauge_fixed")
        before = D.example_losses(start, sched, images, t, noise).mean()
    res = _fit(setup, images, "nonprivate", hyper=_hyper(steps=20, lr=0.03, optimizer="adam",
                                                         noise_multiplicity=1))
    with torch.no_grad():
        fitted = D.build_lora_unet(copy.deepcopy(unet), targets, res.a, res.b, rank=RANK,
                                   alpha=RANK, parametrisation="gauge_fixed")
        after = D.example_losses(fitted, sched, images, t, noise).mean()
    assert res.privacy is None
    assert float(after) < 0.97 * float(before), (float(before), float(after))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_dp_loop_without_noise_or_clipping_is_the_nonprivate_loop(setup, images, optimizer, monkeypatch):
    """The DP code path with noise multiplier 0 and a clip norm above every per-example gradient
    norm (full batch: Poisson sampling at q = 1 takes every row) gives the non-private loop's
    LoRA: the ceiling and the DP fits are the same loop, and only clipping and noise differ.
    (The accountant has nothing to account for with z = 0; it is not what this test checks.)"""
    unet, sched, targets, basis, *_ = setup
    hyper = _hyper(steps=5, batch_size=24, lr=0.01 if optimizer == "adam" else 0.5,
                   optimizer=optimizer, noise_multiplicity=2, max_grad_norm=1e6, ema=0.5)
    ref = _fit(setup, images, "nonprivate", hyper=hyper)
    plan = D.DPPlan(epsilon=math.inf, delta=1e-5, n=24, sample_rate=1.0, steps=5,
                    noise_multiplier=0.0, max_grad_norm=1e6, accountant="gdp")
    monkeypatch.setattr(D, "_accounted", lambda dp, mode: {})
    dp = D.fit_lora(copy.deepcopy(unet), sched, targets, images, method=M.get("dpsgd"), hyper=hyper,
                    rank=RANK, alpha=RANK, parametrisation="gauge_fixed", basis=basis, dp=plan,
                    noise=_noise(), draws_seed=0)
    moved = float(_flat(ref).norm())
    assert moved > 1e-3  # the fit moved away from B = 0
    assert float((_flat(dp) - _flat(ref)).norm()) < 1e-4 * moved
    # and clipping is what the DP loop adds: a small clip norm changes the fit
    clipped = D.fit_lora(copy.deepcopy(unet), sched, targets, images, method=M.get("dpsgd"),
                         hyper=hyper, rank=RANK, alpha=RANK, parametrisation="gauge_fixed",
                         basis=basis, noise=_noise(), draws_seed=0,
                         dp=D.DPPlan(**{**plan.__dict__, "max_grad_norm": 1e-4}))
    assert float((_flat(clipped) - _flat(ref)).norm()) > 0.05 * moved


def test_variants_equal_fits_run_alone(setup, images):
    """Tuning reads (steps, ema) candidates off one non-private fit: each equals the fit run alone."""
    long = _fit(setup, images, "nonprivate",
                hyper=_hyper(steps=6, batch_size=8, optimizer="adam", lr=0.01, ema=0.0))
    unet, sched, targets, basis, *_ = setup
    res = D.fit_lora(copy.deepcopy(unet), sched, targets, images, method=M.get("nonprivate"),
                     hyper=_hyper(steps=6, batch_size=8, optimizer="adam", lr=0.01, ema=0.0),
                     rank=RANK, alpha=RANK, parametrisation="gauge_fixed", basis=basis,
                     draws_seed=0, variant_emas=(0.8,), variants_at=(3, 6))
    assert set(res.variants) == {(3, 0.0), (3, 0.8), (6, 0.0), (6, 0.8)}
    assert torch.equal(_flat(long), torch.cat([res.variants[(6, 0.0)][1][k].flatten() for k in sorted(res.b)]))
    for steps, ema in ((3, 0.0), (3, 0.8), (6, 0.8)):
        alone = _fit(setup, images, "nonprivate",
                     hyper=_hyper(steps=steps, batch_size=8, optimizer="adam", lr=0.01, ema=ema))
        got = torch.cat([res.variants[(steps, ema)][1][k].flatten() for k in sorted(res.b)])
        assert torch.allclose(got, _flat(alone), atol=1e-7), (steps, ema)
    with pytest.raises(ValueError, match="no intermediate variants"):
        _fit_dp_with_variants(setup, images)


def _fit_dp_with_variants(setup, images):
    unet, sched, targets, basis, *_ = setup
    hyper = _hyper(steps=4, batch_size=24)
    plan = D.plan_dp(hyper, n=24, epsilon=2.0, delta=1e-5, accountant="auto", prv_max_epsilon=64)
    return D.fit_lora(copy.deepcopy(unet), sched, targets, images, method=M.get("dpsgd"), hyper=hyper,
                      rank=RANK, alpha=RANK, parametrisation="gauge_fixed", basis=basis, dp=plan,
                      noise=_noise(), variants_at=(2,))


def test_ema_warms_up_and_averages():
    p = torch.nn.Parameter(torch.zeros(1))
    e = D.EMA([p], 0.9)
    seen = []
    for t in range(30):
        p.data.fill_(float(t + 1))
        e.update()
        seen.append(float(e.values()[0]))
    d0 = min(0.9, 1 / 10)  # warm-up: the first update keeps only 10 % of the start
    assert seen[0] == pytest.approx(d0 * 0 + (1 - d0) * 1)
    assert all(a < b for a, b in zip(seen, seen[1:])) and seen[-1] < 30  # lags the iterates
    assert float(D.EMA([p], 0.0).values()[0]) == float(p)  # 0: the last iterate
    with pytest.raises(ValueError, match="baselines.ema"):
        D.EMA([p], 1.0)


def test_dp_adam_with_a_tiny_clip_moves_the_lora(setup, images):
    """The field's recipe: with clip 1e-3 (every per-example gradient normalised) Adam still
    takes lr-sized steps, so a DP fit at a large epsilon leaves B = 0 by about lr per step and
    coordinate, where SGD at the same lr moves by lr * C: nothing."""
    adam = _fit(setup, images, hyper=_hyper(steps=6, batch_size=24, optimizer="adam", lr=0.01,
                                            max_grad_norm=1e-3, noise_multiplicity=1), epsilon=256.0)
    sgd = _fit(setup, images, hyper=_hyper(steps=6, batch_size=24, optimizer="sgd", lr=0.01,
                                           max_grad_norm=1e-3, noise_multiplicity=1), epsilon=256.0)
    n = _flat(adam).numel()
    assert float(_flat(adam).norm()) > 0.2 * 0.01 * math.sqrt(n)
    assert float(_flat(sgd).norm()) < 1e-3 * float(_flat(adam).norm())
