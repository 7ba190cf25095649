import numpy as np
import pytest
import torch

from dpdeepsets import hypernet, lora
from tests.conftest import TARGETS


@pytest.fixture
def setup(tiny_unet):
    targets = lora.find_targets(tiny_unet[0], TARGETS, 2)
    net = hypernet.HyperNet(8, targets, 2, clip_norm=1.0, d_model=32, layers=1, heads=2)
    return net, targets


def test_output_shapes(setup):
    net, targets = setup
    out = net(torch.randn(5, 8), torch.rand(5))
    assert set(out) == {t.name for t in targets}
    for t in targets:
        assert out[t.name].shape == (5, t.out_features, 2)


def test_starts_at_average_public_lora(setup):
    net, targets = setup
    bank = {t.name: torch.randn(10, t.out_features, 2) + 3.0 for t in targets}
    net.set_target_stats(bank)
    out = net(torch.randn(2, 8), torch.zeros(2))
    for t in targets:
        assert torch.allclose(out[t.name][0], bank[t.name].mean(0), atol=1e-5)


def _toy_problem(targets, m=24, k=16, d=8, seed=0):
    """Subsets whose LoRA is a linear function of their mean embedding."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(m, d))
    emb = (centres[:, None, :] + 0.3 * rng.normal(size=(m, k, d))).reshape(m * k, d)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    members = np.arange(m * k).reshape(m, k)
    means = torch.tensor(emb[members].mean(1), dtype=torch.float32)
    proj = {t.name: torch.randn(d, t.out_features * 2) for t in targets}
    bank = {t.name: (means @ proj[t.name]).view(m, t.out_features, 2) for t in targets}
    return emb.astype(np.float32), members, bank


def test_training_fits_and_degrades_to_mean_under_noise(setup):
    net, targets = setup
    emb, members, bank = _toy_problem(targets)
    net.set_target_stats(bank)
    curve = hypernet.train_hypernet(net, emb, members, bank, [0.0, 10.0], steps=300,
                                    batch_size=16, lr=3e-3, weight_decay=0.0,
                                    subsample_fraction=0.75, seed=0)
    assert np.mean(curve[-30:]) < 0.6 * np.mean(curve[:30])
    net.eval()
    z = torch.tensor(emb[members].mean(1))
    with torch.no_grad():
        clean = net.forward_normalised(z, torch.zeros(len(z)))
        noisy = net.forward_normalised(z + 10.0 * torch.randn_like(z), torch.full((len(z),), 10.0))
    targets_n = net.normalise(bank)
    err_clean = np.mean([((p - t) ** 2).mean().item() for p, t in zip(clean, targets_n)])
    spread_noisy = np.mean([(p ** 2).mean().item() for p in noisy])
    assert err_clean < 0.5  # explains most of the (unit) variance of the targets
    assert spread_noisy < 0.5  # at huge noise it stays near the average LoRA (0 in these units)


def test_checkpoint_round_trip(setup, tmp_path):
    net, targets = setup
    basis = lora.make_basis(targets, 2, 0)
    hp = {"emb_dim": 8, "rank": 2, "clip_norm": 1.0, "d_model": 32, "layers": 1, "heads": 2}
    hypernet.save_hypernet(tmp_path / "h.pt", net.eval(), targets, basis, hp, {"alpha": 2})
    net2, targets2, basis2, meta = hypernet.load_hypernet(tmp_path / "h.pt")
    z, s = torch.randn(3, 8), torch.rand(3)
    with torch.no_grad():
        a, b = net(z, s), net2(z, s)
    assert targets2 == targets and meta["alpha"] == 2
    assert all(torch.equal(a[k], b[k]) for k in a)
