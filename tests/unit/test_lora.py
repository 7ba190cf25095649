import copy

import pytest
import torch

from dpdeepsets import lora
from dpdeepsets.diffusion import ddim_sample
from tests.conftest import TARGETS


def _setup(unet, rank=2, seed=0):
    model = copy.deepcopy(unet)
    targets = lora.find_targets(model, TARGETS, rank)
    basis = lora.make_basis(targets, rank, seed)
    layers = lora.attach(model, targets, basis, 1.0)
    return model, targets, basis, layers


def test_targets_cover_linear_and_conv(tiny_unet):
    targets = lora.find_targets(tiny_unet[0], TARGETS, 2)
    kinds = {t.kind for t in targets}
    assert kinds == {"linear", "conv"}
    assert all("attentions" in t.name or "resnets" in t.name for t in targets)


def test_bad_targets_and_rank_refused(tiny_unet):
    with pytest.raises(lora.LoRAError, match="match no"):
        lora.find_targets(tiny_unet[0], ["nothing_like_this"], 2)
    with pytest.raises(lora.LoRAError, match="lora.rank=100 exceeds"):
        lora.find_targets(tiny_unet[0], TARGETS, 100)


def test_basis_is_orthonormal_and_seeded(tiny_unet):
    targets = lora.find_targets(tiny_unet[0], TARGETS, 3)
    b1, b2, b3 = (lora.make_basis(targets, 3, s) for s in (0, 0, 1))
    for t in targets:
        a = b1[t.name].reshape(3, -1).double()
        assert torch.allclose(a @ a.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
        assert torch.equal(b1[t.name], b2[t.name])
        assert not torch.equal(b1[t.name], b3[t.name])


def test_zero_b_is_identity_and_groups_are_independent(tiny_unet):
    unet, _ = tiny_unet
    model, targets, _, layers = _setup(unet)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([3, 300, 600, 900])
    y0 = unet(x, t).sample
    lora.set_b(layers, {k.name: torch.zeros(2, k.out_features, 2) for k in targets})
    assert torch.allclose(model(x, t).sample, y0, atol=1e-6)
    b = {k.name: torch.randn(2, k.out_features, 2) * 0.2 for k in targets}
    b[targets[0].name][0] = 0.0
    lora.set_b(layers, b)
    y_both = model(x, t).sample
    # group 1 (examples 2,3) sees only B[1]: same output as running it alone with S=1
    lora.set_b(layers, {k: v[1:] for k, v in b.items()})
    assert torch.allclose(model(x[2:], t[2:]).sample, y_both[2:], atol=1e-5)
    assert not torch.allclose(y_both, y0, atol=1e-3)


def test_peft_adapter_round_trip_matches_wrapper(tiny_unet, tmp_path):
    """A saved adapter loads onto the base with peft itself and gives the same outputs."""
    unet, scheduler = tiny_unet
    model, targets, basis, layers = _setup(unet)
    b = {t.name: torch.randn(t.out_features, 2) * 0.3 for t in targets}
    lora.set_b(layers, {k: v[None] for k, v in b.items()})
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 990])
    y_wrapper = model(x, t).sample
    lora.save_peft_adapter(tmp_path / "adapter", targets, basis, b, rank=2, alpha=2)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    peft_model = lora.load_adapter_with_peft(copy.deepcopy(unet), tmp_path / "adapter")
    y_peft = peft_model(x, t).sample
    assert torch.allclose(y_peft, y_wrapper, atol=1e-5)
    assert not torch.allclose(y_peft, unet(x, t).sample, atol=1e-3)
    s1 = ddim_sample(peft_model, scheduler, num_samples=4, steps=3, seed=7)
    s2 = ddim_sample(model, scheduler, num_samples=4, steps=3, seed=7)
    assert torch.allclose(s1, s2, atol=1e-4)


def test_missing_adapter_file_is_named(tiny_unet, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter_with_peft(copy.deepcopy(tiny_unet[0]), tmp_path)


def test_batched_fit_equals_one_at_a_time(tiny_unet):
    """S = 8 subsets fitted together give each subset the LoRA it gets when fitted alone (S = 1)."""
    unet, scheduler = tiny_unet
    model, targets, _, layers = _setup(unet)
    gen = torch.Generator().manual_seed(0)
    n_sets = 8
    subsets = [torch.rand(12, 1, 16, 16, generator=gen) * 2 - 1 for _ in range(n_sets)]
    ids = list(range(n_sets))
    kw = dict(rank=2, steps=4, batch_size=4, lr=1e-2, seed=5)
    together = lora.fit_loras(model, scheduler, layers, targets, subsets, ids, **kw)
    worst = 0.0
    for i in ids:
        alone = lora.fit_loras(model, scheduler, layers, targets, subsets[i:i + 1], [i], **kw)
        for name in alone:
            assert torch.allclose(together[name][i], alone[name][0], atol=1e-5, rtol=1e-4), (i, name)
            worst = max(worst, (together[name][i] - alone[name][0]).abs().max().item())
    assert worst < 1e-5
    # Each subset really got its own fit: different data give different LoRAs.
    first = next(iter(together))
    assert not torch.allclose(together[first][0], together[first][1])
    assert max(v.abs().max().item() for v in together.values()) > 0  # it did move


def test_fit_reduces_denoising_loss(tiny_unet):
    from dpdeepsets.diffusion import denoising_loss

    unet, scheduler = tiny_unet
    model, targets, _, layers = _setup(unet)
    x = torch.zeros(16, 1, 16, 16) - 0.8  # a very particular "dataset"
    b = lora.fit_loras(model, scheduler, layers, targets, [x], [0], rank=2, steps=30,
                       batch_size=8, lr=2e-2, seed=0)
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (16,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    before = denoising_loss(model, scheduler, x, t, noise).item()
    lora.set_b(layers, b)
    after = denoising_loss(model, scheduler, x, t, noise).item()
    assert after < before


def test_bank_round_trip(tmp_path, tiny_unet):
    targets = lora.find_targets(tiny_unet[0], TARGETS, 2)
    basis = lora.make_basis(targets, 2, 0)
    b = {t.name: torch.randn(5, t.out_features, 2) for t in targets}
    lora.save_lora_bank(tmp_path / "bank.safetensors", b, basis, range(5), {"rank": 2, "alpha": 2})
    b2, basis2, ids, meta = lora.load_lora_bank(tmp_path / "bank.safetensors")
    assert list(ids) == [0, 1, 2, 3, 4] and meta == {"rank": "2", "alpha": "2"}
    assert all(torch.equal(b[k], b2[k]) and torch.equal(basis[k], basis2[k]) for k in b)
    rebuilt = lora.targets_from_bank(basis2, b2)
    assert sorted(rebuilt, key=lambda t: t.name) == sorted(targets, key=lambda t: t.name)
