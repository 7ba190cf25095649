"""Batched multi-adapter sampling equals sampling every adapter alone, loaded with peft."""

import copy

import numpy as np
import torch

from dpdeepsets import lora, sampling
from dpdeepsets.diffusion import ddim_sample, tensor_to_images

from tests.conftest import TARGETS


def _adapters(unet, tmp_path, count):
    targets = lora.find_targets(unet, TARGETS, 2)
    basis = lora.make_basis(targets, 2, 0)
    gen = torch.Generator().manual_seed(4)
    paths = []
    for i in range(count):
        b = {t.name: 0.5 * torch.randn(t.out_features, 2, generator=gen) for t in targets}
        lora.save_peft_adapter(tmp_path / f"a{i}", targets, basis, b, rank=2, alpha=2)
        paths.append(tmp_path / f"a{i}")
    return paths


def test_batched_sampling_equals_one_adapter_at_a_time_with_peft(tiny_unet, tmp_path):
    unet, scheduler = tiny_unet
    paths = _adapters(unet, tmp_path, 3)
    kw = dict(num_samples=5, steps=4, seed=11, eta=0.5)
    batched = sampling.sample_adapters(copy.deepcopy(unet), scheduler, paths, batch_size=4, **kw)
    for path, got in zip(paths, batched):
        peft_unet = lora.load_adapter_with_peft(copy.deepcopy(unet), path)
        alone = tensor_to_images(ddim_sample(peft_unet, scheduler, batch_size=64, **kw))
        diff = np.abs(got.astype(int) - alone.astype(int))
        assert diff.max() <= 1, diff.max()
        assert (diff == 0).mean() > 0.99
    # the cells really differ (the test is not comparing one model with itself)
    assert np.abs(batched[0].astype(int) - batched[1].astype(int)).max() > 10


def test_base_model_without_adapter(tiny_unet):
    unet, scheduler = tiny_unet
    (images,) = sampling.sample_adapters(copy.deepcopy(unet), scheduler, None, num_samples=3,
                                         steps=2, seed=1, batch_size=8)
    ref = tensor_to_images(ddim_sample(copy.deepcopy(unet), scheduler, num_samples=3, steps=2,
                                       seed=1, batch_size=8))
    np.testing.assert_array_equal(images, ref)
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 1)
