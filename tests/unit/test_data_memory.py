"""Data preparation streams a pool larger than a chunk instead of holding it in memory.

A public pool of ImageNet32 size (1.2M x 32x32x3 = 3.7 GB) must split on a small node:
uncompressed .npz members are memory-mapped and rows are written in chunks
(dpdeepsets.data.CHUNK_BYTES). Measured here on a ~200 MB pool with the peak RSS of the
real prepare_data stage in a child process.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

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


def test_prepare_data_peak_rss_stays_far_below_the_pool(tmp_path):
    n, side = 65_536, 32  # 201 MB of uint8 RGB, ~6 chunks of CHUNK_BYTES
    src = tmp_path / "pool.npz"
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(tmp_path / "build.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, side, side, 3))
    for lo in range(0, n, 8192):
        images[lo:lo + 8192] = rng.integers(0, 256, (min(8192, n - lo), side, side, 3), dtype=np.uint8)
    D.save_split(str(src), images, rng.integers(0, 10, n))
    del images
    (tmp_path / "build.npy").unlink()
    pool_mb = src.stat().st_size / 2**20

    settings = {"data": {"source": {"kind": "npz", "path": str(src), "split": "all"},
                         "public_source": None, "image_size": side, "public_fraction": 0.8,
                         "split_seed": 0, "validation_fraction": 0.2, "public_classes": None,
                         "private_classes": None}}
    out = tmp_path / "out"
    # A wrapper reports the peak RSS of its one child, the real stage script.
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "workflow/scripts/prepare_data.py",
         "--settings", json.dumps(settings), "--out-public", str(out / "public.npz"),
         "--out-validation", str(out / "validation.npz"), "--out-private", str(out / "private.npz"),
         "--out-summary", str(out / "summary.json")],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    summary = json.loads((out / "summary.json").read_text())
    assert summary["public"] + summary["validation"] + summary["private"] == n
    pub, _ = D.load_split(str(out / "public.npz"), mmap=True)
    assert pub.shape == (summary["public"], side, side, 3)
    # Materialising the pool would need >= 1x (load) + 1x (split copies) = 400 MB.
    assert peak_mb < pool_mb / 2, f"prepare_data peaked at {peak_mb:.0f} MB for a {pool_mb:.0f} MB pool"
