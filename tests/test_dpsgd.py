"""The gradient-based baselines (dpdeepsets.dpsgd): per-sample gradients, accounting, PDA-DPMD.

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

from dpdeepsets import dpsgd as D
from dpdeepsets import lora as L
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


def test_dp_lora_layer_matches_lora_layer(setup):
    """DPLoRALayer (peft layout) computes what lora.LoRALayer computes with one group."""
    unet, sched, targets, basis, b0, (x0, t, noise) = setup
    m = _model(setup, "gauge_fixed")
    u2 = copy.deepcopy(unet)
    layers = L.attach(u2, targets, basis, 1.0)
    L.set_b(layers, {k: v[None] for k, v in b0.items()})
    tt = t[:, 0]
    xt = sched.add_noise(x0, noise[:, 0], tt)
    with torch.no_grad():
        assert torch.allclose(m(xt, tt), u2(xt, tt).sample, atol=1e-5)


def _cfg(**kw):
    return {**BASELINE_DEFAULTS, "epochs": 2, "batch_size": 8, "noise_multiplicity": 2,
            "pda_public_batch_size": 8, "lr": 0.01, **kw}


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(3)
    # smooth blobs, so the denoising loss has something to learn
    base = torch.randn(24, 1, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(base, size=16, mode="bilinear").tanh()


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_accounted_epsilon_within_target(setup, images, accountant):
    unet, sched, targets, basis, *_ = setup
    res = D.train_lora(copy.deepcopy(unet), sched, targets, images, method="dpsgd",
                       cfg=_cfg(accountant=accountant), rank=RANK, alpha=RANK, basis=basis,
                       epsilon=2.0, delta=1e-5, seed=0)
    p = res.privacy
    assert p["accounted_epsilon"] <= 2.0 and p["accounted_epsilon"] > 1.0
    assert p["steps"] == 2 * 3 and p["sample_rate"] == pytest.approx(1 / 3)
    assert p["noise_multiplier"] > 0.5
    entry = D.dpsgd_ledger_entry(method="dpsgd", pset="p0", seed=0, epsilon=2.0, delta=1e-5, n=24,
                                 dim=10, cfg=_cfg(accountant=accountant), privacy=p,
                                 noise_source="seeded")
    assert entry["mechanism"] == f"dp-sgd (opacus, {accountant})" and entry["private"]
    assert entry["sigma"] == p["noise_multiplier"] and entry["accounted_epsilon"] <= entry["epsilon"]


def test_alpha_schedule():
    T = 8
    got = [D.alpha_schedule(t, T) for t in range(T + 1)]
    assert got[0] == 1.0 and got[-1] == pytest.approx(0.0, abs=1e-12)
    assert got == pytest.approx([math.cos(math.pi * t / (2 * T)) for t in range(T + 1)])
    assert all(a > b for a, b in zip(got, got[1:]))


def test_pda_dpmd_with_alpha_one_is_dpsgd(setup, images):
    """With alpha = 1 the public gradient gets weight 0: exactly DP-SGD from the same start."""
    unet, sched, targets, basis, b0, _ = setup
    init = (basis, {k: 0.1 * v for k, v in b0.items()})
    common = dict(cfg=_cfg(accountant="rdp", epochs=1), rank=RANK, alpha=RANK, basis=basis, init=init,
                  epsilon=4.0, delta=1e-5, seed=5)
    ft = D.train_lora(copy.deepcopy(unet), sched, targets, images, method="public_ft_dpsgd", **common)
    one = D.train_lora(copy.deepcopy(unet), sched, targets, images, method="pda_dpmd",
                       public_images=images.flip(0), alpha_fn=lambda t, T: 1.0, **common)
    cos = D.train_lora(copy.deepcopy(unet), sched, targets, images, method="pda_dpmd",
                       public_images=images.flip(0), **common)
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
    res = D.train_lora(copy.deepcopy(unet), sched, targets, images, method="nonprivate",
                       cfg=_cfg(lr=0.03, noise_multiplicity=1), rank=RANK, alpha=RANK,
                       basis=basis, steps=20, seed=0)
    with torch.no_grad():
        fitted = D.build_lora_unet(copy.deepcopy(unet), targets, res.a, res.b, rank=RANK,
                                   alpha=RANK, parametrisation="gauge_fixed")
        after = D.example_losses(fitted, sched, images, t, noise).mean()
    assert res.privacy is None
    assert float(after) < 0.97 * float(before), (float(before), float(after))
