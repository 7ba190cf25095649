"""The on-disk format of images and embeddings, and its validation.

Contract used by every stage of the pipeline:

* images are ``uint8`` numpy arrays of shape ``[N, H, W, C]`` with ``C`` in {1, 3};
* labels (optional) are ``int64`` arrays of shape ``[N]``;
* one ``.npz`` file per split, with key ``images`` and, if labelled, ``labels``;
* embeddings are one ``.npy`` float array ``[N, d]``.

Every reader validates what it reads and raises :class:`DataError` with a one-line
message that names the offending file.

Memory.  ``np.savez`` stores each array uncompressed, so a split's ``images`` can be
memory-mapped straight out of the ``.npz`` (:func:`load_split` with ``mmap=True``):
a public pool larger than RAM is read page by page, never whole.  :func:`save_split`
streams rows in chunks of about :data:`CHUNK_BYTES` (optionally a subset of rows,
``index=``), dropping the source pages it has read, so splitting an ImageNet32-sized
pool (1.2M x 32x32x3, 3.7 GB) needs a few hundred MB of RAM. :func:`take_rows` reads a
subsample of a mapped pool the same way (resident: the rows taken plus one chunk).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import zipfile
from typing import Mapping

import numpy as np

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
# on-disk split format
# --------------------------------------------------------------------------
def atomic_savez(path: str, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Write ``arrays`` to ``path`` as .npz atomically (:func:`dpdeepsets.io.atomic_path`):
    an existing ``path`` is left untouched if anything fails."""
    from ..io import atomic_path

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


def take_rows(array: np.ndarray, index, *, chunk_bytes: int | None = None) -> np.ndarray:
    """``array[index]`` as an in-memory array, read in chunks of about ``chunk_bytes``
    (default :data:`CHUNK_BYTES`).

    For a memory-mapped ``array`` the pages read are dropped after each chunk, so the
    resident memory is the result (``len(index)`` rows) plus one chunk, however long
    ``array`` is; a fancy index on the map would keep every page it touched resident.
    """
    index = np.asarray(index)
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise ValueError(f"take_rows: index must be a 1-D integer array, got {index.dtype} {index.shape}")
    index = index.astype(np.int64, copy=False)
    out = np.empty((len(index),) + tuple(array.shape[1:]), dtype=array.dtype)
    row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    for lo, hi in _index_chunks(index, row_bytes, chunk_bytes):
        out[lo:hi] = array[index[lo:hi]]
        _drop_pages(array)
    return out


def _index_chunks(index: np.ndarray, row_bytes: int, chunk_bytes: int | None = None):
    """Chunks of ``index`` positions; for a sorted index each chunk's rows also span at most
    one chunk of the source, so a sparse selection does not map a wide source range."""
    step = next(iter_chunks(1 << 62, row_bytes, chunk_bytes))[1]
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
    from ..io import atomic_path

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




def private_set_rows(sets_path: str, pset: str) -> np.ndarray:
    """The pool rows of set ``pset`` ('p3' or 'q1': the index after the letter) of a subsets .npz."""
    members = np.load(sets_path)["members"]
    try:
        index = int(pset[1:])
    except ValueError:
        raise DataError(f"{pset!r} is not a set id (p0, p1, ... or q0, q1, ...)") from None
    if not 0 <= index < len(members):
        raise DataError(f"set {pset} does not exist ({sets_path} has {len(members)} sets)")
    return members[index]
