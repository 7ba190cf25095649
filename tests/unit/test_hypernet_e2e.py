"""End-to-end hypernetwork training and its public validation (dpdeepsets.hypernet_e2e)."""

import copy

import numpy as np
import torch

from dpdeepsets import hypernet, hypernet_e2e, lora
from tests.conftest import TARGETS


def test_knn_sets_are_the_nearest_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    sets = hypernet_e2e.knn_sets(x, anchors=7, k=5, seed=1, chunk=3)
    assert sets.shape == (7, 5)
    # each set is the k nearest rows of one of its members (its anchor)
    for s in sets:
        ok = False
        for a in s:
            d = ((x - x[a]) ** 2).sum(1)
            if set(np.argsort(d)[:5]) == set(s):
                ok = True
        assert ok


def _problem(tiny_unet):
    unet, scheduler = tiny_unet
    unet = copy.deepcopy(unet)
    targets = lora.find_targets(unet, TARGETS, 2)
    basis = lora.make_basis(targets, 2, 0)
    layers = lora.attach(unet, targets, basis, 1.0)
    gen = torch.Generator().manual_seed(0)
    # two kinds of images (smooth blobs / checkerboards), and embeddings that tell them apart
    blobs = torch.nn.functional.interpolate(torch.randn(24, 1, 4, 4, generator=gen), size=16,
                                            mode="bilinear").tanh()
    checks = torch.nn.functional.interpolate(torch.randn(24, 1, 2, 2, generator=gen), size=16,
                                             mode="nearest").sign() * 0.8
    images = torch.cat([blobs, checks])
    emb = np.concatenate([np.tile([1.0, 0.0], (24, 1)), np.tile([0.0, 1.0], (24, 1))])
    emb = emb + 0.01 * np.random.default_rng(0).normal(size=emb.shape)
    net = hypernet.HyperNet(2, targets, 2, clip_norm=1.0, d_model=16, layers=1, heads=2)
    bank = {t.name: 0.01 * torch.randn(4, t.out_features, 2, generator=gen) for t in targets}
    net.set_target_stats(bank)
    return unet, scheduler, layers, images, emb, net, bank


def _fixed_loss(net, unet, scheduler, layers, images, emb):
    """Denoising loss of each half's generated LoRA on its own images, fixed draws."""
    from dpdeepsets.diffusion import denoising_loss, draw_noise

    gen = torch.Generator().manual_seed(123)
    t, noise = draw_noise(images.repeat(4, 1, 1, 1), 1000, gen)
    z = torch.as_tensor(np.stack([emb[:24].mean(0), emb[24:].mean(0)]), dtype=torch.float32)
    with torch.no_grad():
        x0 = torch.cat([images[:24].repeat(4, 1, 1, 1), images[24:].repeat(4, 1, 1, 1)])
        lora.set_b(layers, net(z, torch.zeros(2)))  # group 0: the first half's LoRA, group 1: the second's
        try:
            return float(denoising_loss(unet, scheduler, x0, t, noise))
        finally:
            lora.set_b(layers, None)


def test_end_to_end_training_lowers_the_denoising_loss_and_leaves_the_unet_alone(tiny_unet):
    unet, scheduler, layers, images, emb, net, bank = _problem(tiny_unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    start = _fixed_loss(net, unet, scheduler, layers, images, emb)
    sets = hypernet_e2e.knn_sets(emb, anchors=20, k=8, seed=0)
    hypernet_e2e.train_end_to_end(net, unet, scheduler, layers, images, emb, sets, [0.0, 0.05],
                                  steps=80, sets_per_step=4, images_per_set=8, lr=3e-3, seed=0)
    end = _fixed_loss(net, unet, scheduler, layers, images, emb)
    assert end < 0.97 * start, (start, end)
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # only the hypernetwork learns
    rows = hypernet_e2e.validate(net, unet, scheduler, layers, bank, np.eye(2)[[0, 1, 0, 1]],
                                 [images[:24], images[24:]], np.eye(2), {1.0: 0.05}, draws=1, seed=0)
    assert {r["method"] for r in rows} == {"dpdeepsets", "nearest_public_lora", "mean_public_lora", "base"}
    table = {(t["method"], t["epsilon"]): t for t in hypernet_e2e.summarise(rows)["table"]}
    assert table[("base", 0.0)]["gain_over_base_pct"] == 0.0
    assert table[("dpdeepsets", 1.0)]["gain_over_base_pct"] > 0
