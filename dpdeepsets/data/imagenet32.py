"""Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017) -> the loader's ``.npz``.

    python -m dpdeepsets.data.imagenet32 SRC_DIR OUT.npz [--split train|val]

Input: the official pickled batches from https://image-net.org/download-images, extracted.
``--split train`` (``Imagenet32_train.zip``) reads ``train_data_batch_1`` ... ``_10``,
``--split val`` (``Imagenet32_val.zip``) reads ``val_data``, all from ``SRC_DIR``. Each file
is a pickled dict:

* ``data``: uint8 ``[n, 3072]``, one image per row, channel-major (1,024 red values, then
  1,024 green, then 1,024 blue, each a row-major 32x32 plane), as in CIFAR-10;
* ``labels``: ``n`` ints in 1..1000 (the dataset's own class numbering, its
  ``map_clsloc.txt``; not the synset order of other ImageNet releases);
* ``mean`` (train batches only): the mean training image. Ignored.

Output: ONE uncompressed ``.npz`` in the layout of :mod:`dpdeepsets.data.store`:
``images`` uint8 ``[N, 32, 32, 3]`` (NHWC) and ``labels`` int64 ``[N]``, **0-based**
(ImageNet32 label - 1, so 0..999), rows in file order (batch 1 first). Uncompressed, so
:func:`dpdeepsets.data.load_npz` and :func:`~dpdeepsets.data.load_split` memory-map it.

Bounded memory: every batch is read twice. The first pass validates each file and counts
its rows (the ``.npy`` header of ``images`` states N before any row is written); the second
streams the rows into the archive member in chunks of about
:data:`~dpdeepsets.data.store.CHUNK_BYTES` (:func:`~dpdeepsets.data.store._write_npy_member`,
the writer of :func:`~dpdeepsets.data.store.save_split`). Resident: one batch as the pickle
holds it (a train batch is about 128,000 images, 394 MB of uint8), one chunk, and the labels
(8 bytes per image, 10 MB for the train split). Nothing becomes float. Disk: the output
(3.9 GB for the train split) once, as a temporary file beside it that is renamed onto
``OUT.npz`` when complete (:func:`dpdeepsets.io.atomic_path`): a failed or killed run
leaves no ``OUT.npz``, and an existing one untouched.

Safety: the files are read with a restricted unpickler that allows numpy arrays and plain
Python values only (like the CIFAR-10 loader's); a pickle that names any other global is
refused, never executed. Every refusal is a one-line :class:`DataError` naming the file.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import pickle
import sys
import time
import zipfile

import numpy as np
from tqdm.auto import tqdm

from .sources import _CifarUnpickler
from .store import DataError, _write_npy_member

log = logging.getLogger(__name__)

SIZE = 32
ROW = 3 * SIZE * SIZE
NUM_CLASSES = 1000
#: The batch files of each split, in the order their rows are written.
SPLITS = {"train": tuple(f"train_data_batch_{i}" for i in range(1, 11)), "val": ("val_data",)}


class _BatchUnpickler(_CifarUnpickler):
    """The CIFAR-10 loader's whitelist (numpy arrays), with this format's name in refusals."""

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in an ImageNet32 batch")
        return super().find_class(module, name)


def _entry(batch: dict, key: str):
    return batch[key] if key in batch else batch.get(key.encode())


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One ImageNet32 batch file -> (``data`` uint8 ``[n, 3072]`` as stored, labels int64
    ``[n]`` **0-based**). Refuses anything else with a :class:`DataError` naming ``path``."""
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: ImageNet32 batch file not found") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable ImageNet32 batch pickle "
                        f"({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: an ImageNet32 batch is a pickled dict, got {type(batch).__name__}")
    data, labels = _entry(batch, "data"), _entry(batch, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: missing 'data' or 'labels' entry "
                        f"(keys: {sorted(map(str, batch))})")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW or not len(data):
        shape = tuple(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array [n, {ROW}] (3x32x32, "
                        f"channel-major; ImageNet64 rows have 12288), got {shape}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8, got {data.dtype}")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: 'labels' must hold one label per image ({len(data)}), "
                        f"got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 1 or hi > NUM_CLASSES:
        raise DataError(f"{path}: labels must lie in 1..{NUM_CLASSES} (ImageNet32 numbers its "
                        f"classes from 1), got {lo}..{hi}")
    return data, labels.astype(np.int64) - 1


class _BatchRows:
    """The images of several batch files as one NHWC uint8 array, read file by file.

    Just enough of an array for :func:`~dpdeepsets.data.store._write_npy_member`
    (``shape``, ``dtype``, ascending ``[lo:hi]`` slices): one file is resident at a time,
    and each chunk becomes NHWC (a transposed copy of its rows) only when it is written.
    """

    def __init__(self, paths: list[str], counts: list[int], labels: list[np.ndarray], bar):
        self.paths, self.counts, self.labels, self.bar = paths, counts, labels, bar
        self.starts = [0, *np.cumsum(counts).tolist()]
        self.shape = (self.starts[-1], SIZE, SIZE, 3)
        self.dtype = np.dtype(np.uint8)
        self._index, self._images = None, None

    def _batch(self, i: int) -> np.ndarray:
        if self._index != i:
            self._images = None  # release the previous file before reading the next
            data, labels = read_batch(self.paths[i])
            if len(data) != self.counts[i] or not np.array_equal(labels, self.labels[i]):
                raise DataError(f"{self.paths[i]}: changed while being converted "
                                f"({self.counts[i]} images at the first read, {len(data)} now)")
            self._index, self._images = i, data.reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1)
        return self._images

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi = rows.start, rows.stop
        pieces = []
        while lo < hi:
            i = bisect.bisect_right(self.starts, lo) - 1
            end = min(hi, self.starts[i + 1])
            # a copy, so that no view keeps this file's array alive once the next is read
            pieces.append(np.ascontiguousarray(self._batch(i)[lo - self.starts[i]:end - self.starts[i]]))
            lo = end
        self.bar.update(rows.stop - rows.start)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def convert(src_dir: str, out: str, split: str = "train", *, progress: bool | None = None) -> dict:
    """Write ``out`` (see the module docstring) from the ``split`` batches in ``src_dir``.

    Returns ``{"images": N, "files": [...], "seconds": ...}``. Raises :class:`DataError`
    (one line, naming the file) for a missing directory or batch file, a file that is not an
    ImageNet32 batch, data of the wrong shape or dtype, or labels outside 1..1000.
    """
    from ..io import atomic_path
    from .sources import load_npz

    src_dir, out = os.fspath(src_dir), os.fspath(out)
    names = SPLITS.get(split)
    if names is None:
        raise DataError(f"unknown ImageNet32 split {split!r}; use one of {sorted(SPLITS)}")
    if not out.endswith(".npz"):
        raise DataError(f"{out}: the output must be an .npz file (name ending in .npz)")
    if not os.path.isdir(src_dir):
        raise DataError(f"{src_dir}: ImageNet32 directory not found (the extracted "
                        f"Imagenet32_{split}.zip, holding {', '.join(names[:2])}{' ...' if len(names) > 2 else ''})")
    paths = [os.path.join(src_dir, n) for n in names]
    missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{src_dir}: missing ImageNet32 batch file(s) {', '.join(missing)} "
                        f"(--split {split} reads {names[0]}{' ... ' + names[-1] if len(names) > 1 else ''})")
    disable = (not sys.stderr.isatty()) if progress is None else (not progress)
    t0 = time.perf_counter()
    counts, labels = [], []
    for path in tqdm(paths, desc="check batches", unit="file", disable=disable):
        data, lab = read_batch(path)
        counts.append(len(data))
        labels.append(lab)
        del data
        log.info("read %s: %d images", path, counts[-1])
    total = sum(counts)
    with tqdm(total=total, desc=f"write {os.path.basename(out)}", unit="img", unit_scale=True,
              disable=disable) as bar:
        rows = _BatchRows(paths, counts, labels, bar)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as raw:
                with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    _write_npy_member(zf, "images", rows, None)
                    _write_npy_member(zf, "labels", np.concatenate(labels), None)
                raw.flush()
                os.fsync(raw.fileno())
    images, _ = load_npz(out)  # the loader's own check of what was written (a memory map)
    if images.shape != (total, SIZE, SIZE, 3):
        raise DataError(f"{out}: wrote {images.shape}, expected ({total}, 32, 32, 3)")
    seconds = time.perf_counter() - t0
    log.info("wrote %s: images uint8 %s, labels int64 [%d] (0-based: ImageNet32 label - 1) "
             "in %.1f s", out, list(images.shape), total, seconds)
    return {"images": total, "files": paths, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dpdeepsets.data.imagenet32",
        description="Convert the downsampled ImageNet 32x32 pickled batches into one "
                    "uncompressed .npz: images uint8 [N,32,32,3], labels int64 [N], 0-based "
                    "(ImageNet32's 1..1000 minus 1). Streams batch by batch; atomic.")
    p.add_argument("src_dir", help="directory holding the extracted batches "
                                   "(train_data_batch_1 ... _10, or val_data)")
    p.add_argument("out", help="the .npz to write (e.g. data/imagenet32/train_32x32.npz)")
    p.add_argument("--split", choices=sorted(SPLITS), default="train",
                   help="train: train_data_batch_1..10; val: val_data")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = convert(args.src_dir, args.out, args.split,
                         progress=False if args.no_progress else None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {result['images']} images from {len(result['files'])} file(s) "
          f"in {result['seconds']:.1f} s; labels are 0-based (ImageNet32 label - 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
