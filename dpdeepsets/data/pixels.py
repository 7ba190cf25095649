"""Pixel transforms: resizing, and the uint8 <-> model-range [-1, 1] conversions."""

from __future__ import annotations

import numpy as np

from .store import _drop_pages, _validate_images, iter_chunks


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
