"""python -m dpdeepsets.data.imagenet32: the downsampled-ImageNet batches -> the loader's .npz.

The fixtures are written in the real batch format (a pickled dict with `data` uint8
[n, 3072] channel-major, `labels` a list of ints 1..1000, and the train batches' `mean`)."""

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dpdeepsets import data as D
from dpdeepsets.data import DataError, imagenet32, store

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [f"train_data_batch_{i}" for i in range(1, 11)]


def _write_batch(path, data, labels, *, mean=True):
    batch = {"data": data, "labels": list(labels)}
    if mean:
        batch["mean"] = data.astype(np.float64).mean(0)
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)


def _batches(root: Path, sizes=(3, 5, 1, 4, 2, 6, 3, 2, 5, 4), seed=0):
    """Ten train batches of the given sizes; returns (all data rows, all 1-based labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for name, n in zip(TRAIN, sizes):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = rng.integers(1, 1001, n)
        lab[0] = 1000 if name.endswith("_1") else lab[0]  # both ends of the range occur
        lab[-1] = 1 if name.endswith("_2") else lab[-1]
        _write_batch(root / name, data, lab.tolist())
        rows.append(data), labels.append(lab)
    return np.concatenate(rows), np.concatenate(labels)


def _pixel(data, i, y, x, c):
    """The official layout, read without reshape: 1,024 values per channel, row-major."""
    return data[i, c * 1024 + y * 32 + x]


def test_round_trip_through_the_loader(tmp_path, monkeypatch):
    # Chunks of 2.5 images: every chunk boundary and most batch boundaries fall mid-chunk.
    monkeypatch.setattr(store, "CHUNK_BYTES", 3072 * 5 // 2)
    data, labels = _batches(tmp_path / "Imagenet32_train")
    out = tmp_path / "imagenet32" / "train_32x32.npz"
    result = imagenet32.convert(tmp_path / "Imagenet32_train", out, "train", progress=False)
    assert result["images"] == len(data) == 35
    images, got = D.load_npz(str(out))
    assert isinstance(images, np.memmap)  # uncompressed: memory-mapped, not read
    assert images.shape == (35, 32, 32, 3) and images.dtype == np.uint8
    assert got.dtype == np.int64 and np.array_equal(got, labels - 1)
    assert got.min() == 0 and got.max() == 999
    rng = np.random.default_rng(1)
    for i, y, x, c in zip(rng.integers(0, 35, 200), rng.integers(0, 32, 200),
                          rng.integers(0, 32, 200), rng.integers(0, 3, 200)):
        assert images[i, y, x, c] == _pixel(data, i, y, x, c)
    assert np.array_equal(images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["images.npy", "labels.npy"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # the split loader (what prepare_data reads a public pool with) agrees
    split_images, split_labels = D.load_split(str(out), mmap=True)
    assert np.array_equal(split_images, images) and np.array_equal(split_labels, got)
    assert [p.name for p in out.parent.iterdir()] == ["train_32x32.npz"]  # no temp file left


def test_val_split_without_mean(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    src = tmp_path / "Imagenet32_val"
    src.mkdir()
    _write_batch(src / "val_data", data, [5, 1, 1000, 7, 7, 2, 3], mean=False)
    out = tmp_path / "val.npz"
    imagenet32.convert(src, out, "val", progress=False)
    images, labels = D.load_npz(str(out))
    assert labels.tolist() == [4, 0, 999, 6, 6, 1, 2]
    assert images[3, 31, 0, 2] == _pixel(data, 3, 31, 0, 2)


def test_command_line(tmp_path):
    data, labels = _batches(tmp_path / "src")
    out = tmp_path / "out.npz"
    cmd = [sys.executable, "-m", "dpdeepsets.data.imagenet32", str(tmp_path / "src"), str(out),
           "--split", "train"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "35 images from 10 file(s)" in proc.stdout and "0-based" in proc.stdout
    assert np.array_equal(D.load_npz(str(out))[1], labels - 1)
    os.remove(tmp_path / "src" / "train_data_batch_4")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'src'}: missing ImageNet32 batch file(s) train_data_batch_4 "
        "(--split train reads train_data_batch_1 ... train_data_batch_10)")


def _refused(tmp_path, message, split="train"):
    out = tmp_path / "out.npz"
    out.write_bytes(b"an earlier output")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=message) as err:
        imagenet32.convert(tmp_path / "src", out, split, progress=False)
    assert "\n" not in str(err.value)
    assert out.read_bytes() == b"an earlier output"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp file left
    return str(err.value)


def test_missing_directory_and_files(tmp_path):
    _refused(tmp_path, "src: ImageNet32 directory not found")
    _batches(tmp_path / "src")
    for name in ("train_data_batch_3", "train_data_batch_10"):
        os.remove(tmp_path / "src" / name)
    _refused(tmp_path, "missing ImageNet32 batch file\\(s\\) train_data_batch_3, train_data_batch_10")
    _refused(tmp_path, "missing ImageNet32 batch file\\(s\\) val_data", split="val")


@pytest.mark.parametrize("case, message", [
    ("wide", r"train_data_batch_6: 'data' must be a uint8 array \[n, 3072\] .*got \(2, 12288\)"),
    ("nchw", r"train_data_batch_6: 'data' must be a uint8 array \[n, 3072\] .*got \(2, 3, 32, 32\)"),
    ("float", r"train_data_batch_6: 'data' must be uint8, got float32"),
    ("label0", r"train_data_batch_6: labels must lie in 1\.\.1000 \(ImageNet32 numbers its classes from 1\), got 0\.\.3"),
    ("label1001", r"train_data_batch_6: labels must lie in 1\.\.1000 .*got 2\.\.1001"),
    ("count", r"train_data_batch_6: 'labels' must hold one label per image \(2\), got shape \(3,\)"),
    ("strlabels", r"train_data_batch_6: 'labels' must be integers"),
    ("nolabels", r"train_data_batch_6: missing 'data' or 'labels' entry"),
    ("list", r"train_data_batch_6: an ImageNet32 batch is a pickled dict, got list"),
    ("garbage", r"train_data_batch_6: not a readable ImageNet32 batch pickle"),
    ("truncated", r"train_data_batch_6: not a readable ImageNet32 batch pickle \((EOFError|UnpicklingError)"),
])
def test_bad_batch_is_refused_naming_the_file(tmp_path, case, message):
    _batches(tmp_path / "src")
    path = tmp_path / "src" / "train_data_batch_6"
    good = np.zeros((2, 3072), np.uint8)
    if case == "wide":
        _write_batch(path, np.zeros((2, 12288), np.uint8), [1, 2])
    elif case == "nchw":
        _write_batch(path, np.zeros((2, 3, 32, 32), np.uint8), [1, 2], mean=False)
    elif case == "float":
        _write_batch(path, good.astype(np.float32), [1, 2])
    elif case == "label0":
        _write_batch(path, good, [0, 3])
    elif case == "label1001":
        _write_batch(path, good, [2, 1001])
    elif case == "count":
        _write_batch(path, good, [1, 2, 3])
    elif case == "strlabels":
        _write_batch(path, good, ["n01", "n02"])
    elif case == "nolabels":
        path.write_bytes(pickle.dumps({"data": good}))
    elif case == "list":
        path.write_bytes(pickle.dumps([good]))
    elif case == "garbage":
        path.write_bytes(b"this is not a pickle at all")
    elif case == "truncated":
        path.write_bytes(pickle.dumps({"data": good, "labels": [1, 2]})[:200])
    _refused(tmp_path, message)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_globals_are_refused_not_executed(tmp_path):
    _batches(tmp_path / "src")
    marker = tmp_path / "executed"
    exploit = _Exploit()
    exploit.marker = marker
    (tmp_path / "src" / "train_data_batch_2").write_bytes(
        pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [1], "x": exploit}))
    _refused(tmp_path, r"train_data_batch_2: not a readable ImageNet32 batch pickle "
                       r"\(UnpicklingError: global '(posix|os|nt)\.system' is not allowed in an ImageNet32 batch\)")
    assert not marker.exists()


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """A batch that changes between the checking pass and the writing pass (or any failure
    mid-write) leaves no output and no temporary file."""
    _batches(tmp_path / "src")
    reads = []
    real = imagenet32.read_batch

    def read(path):
        reads.append(os.path.basename(path))
        data, labels = real(path)
        if len(reads) > 10 and reads[-1] == "train_data_batch_7":  # the writing pass
            return data[:-1], labels[:-1]
        return data, labels

    monkeypatch.setattr(imagenet32, "read_batch", read)
    _refused(tmp_path, r"train_data_batch_7: changed while being converted \(3 images at the "
                       r"first read, 2 now\)")
    assert reads[:10] == TRAIN  # every file was checked before a row was written


def test_output_must_be_npz_and_split_known(tmp_path):
    _batches(tmp_path / "src")
    with pytest.raises(DataError, match=r"out\.npy: the output must be an \.npz file"):
        imagenet32.convert(tmp_path / "src", tmp_path / "out.npy", "train", progress=False)
    with pytest.raises(DataError, match="unknown ImageNet32 split 'test'"):
        imagenet32.convert(tmp_path / "src", tmp_path / "out.npz", "test", progress=False)
