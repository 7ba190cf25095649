"""A digit classifier of the public pool, for the class histograms of the specificity table.

Multinomial logistic regression on standardised pixels (scikit-learn), fitted on the
labelled public pool only and checked on the held-out public validation pool; saved as
plain arrays (no pickle) and applied with numpy, so a sampling job pays no import for it.
It labels generated samples; the histogram of those labels is compared with each private
set's label histogram (total variation) in the specificity table.

Memory is bounded independently of the pool size N. :func:`fit` uses a seeded subsample of
at most ``max_images`` rows (:data:`DEFAULT_MAX_IMAGES`; the default config's pool of a few
thousand digits is used whole), read from a memory-mapped pool chunk by chunk; the
standardisation statistics are accumulated in float64 over chunks, and the solver gets the
standardised subsample as one float64 ``[rows, H*W*C]`` matrix, so a pool below
``max_images`` is fitted on all its rows exactly as a whole-pool fit would be (60,000
ImageNet32 images: 1.5 GB; benchmarks/scale.py measured 1.8 GB for the whole stage).
:meth:`DigitClassifier.predict` (and so the validation accuracy) works on chunks of about
:data:`dpdeepsets.data.CHUNK_BYTES` of pixels in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.store import _drop_pages, iter_chunks, take_rows

#: Public images that fit the classifier at most; a larger pool is subsampled (seeded).
DEFAULT_MAX_IMAGES = 60_000


@dataclass
class DigitClassifier:
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    classes: np.ndarray  # [C] label values
    mean: np.ndarray  # [D] pixel standardisation
    scale: np.ndarray  # [D]
    shape: tuple  # H, W, C of the images it was fitted on
    validation_accuracy: float

    def _x(self, images: np.ndarray) -> np.ndarray:
        """Standardised float32 pixels [n, D] of uint8 images [n, H, W, C]."""
        if tuple(images.shape[1:]) != tuple(self.shape):
            raise ValueError(f"the classifier was fitted on images {tuple(self.shape)}, got {tuple(images.shape[1:])}")
        return _standardise(_pixels(images), self.mean, self.scale)

    def predict(self, images: np.ndarray, *, chunk_bytes: int | None = None) -> np.ndarray:
        """Labels of uint8 [N, H, W, C] images (which may be memory-mapped).

        Works on chunks of about ``chunk_bytes`` of uint8 pixels (default
        :data:`~dpdeepsets.data.CHUNK_BYTES`), so beyond the [N] labels it holds one chunk
        in float32 (4x its bytes) and its [chunk, C] logits, whatever N is.
        """
        if not isinstance(images, np.ndarray):
            images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"the classifier labels uint8 images [N, H, W, C], got shape {images.shape}")
        weight_t = np.ascontiguousarray(self.weight.T, dtype=np.float32)
        bias = self.bias.astype(np.float32)
        out = np.empty(len(images), dtype=self.classes.dtype)
        row_bytes = int(np.prod(images.shape[1:], dtype=np.int64))
        for lo, hi in iter_chunks(len(images), row_bytes, chunk_bytes):
            out[lo:hi] = self.classes[np.argmax(self._x(images[lo:hi]) @ weight_t + bias, axis=1)]
            _drop_pages(images)
        return out

    def save(self, path) -> None:
        from .data import atomic_savez

        atomic_savez(path, {"weight": self.weight, "bias": self.bias, "classes": self.classes,
                            "mean": self.mean, "scale": self.scale, "shape": np.asarray(self.shape),
                            "validation_accuracy": np.asarray(self.validation_accuracy)})


def _pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, C] -> float32 [n, D] in [0, 1]."""
    return np.asarray(images).reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean) / scale in place on float32 ``x``."""
    x -= mean.astype(np.float32)
    x /= scale.astype(np.float32)
    return x


def fit_rows(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """The rows :func:`fit` uses: all of ``range(n)`` if ``n <= max_images`` (or
    ``max_images`` is None), else a seeded uniform sample of ``max_images`` rows without
    replacement, sorted (the pool is read front to back)."""
    if max_images is None or n <= max_images:
        return np.arange(n, dtype=np.int64)
    if int(max_images) < 2:
        raise ValueError(f"the classifier needs max_images >= 2, got {max_images}")
    rows = np.random.default_rng(seed).choice(n, int(max_images), replace=False)
    return np.sort(rows).astype(np.int64)


def _moments(images: np.ndarray, chunk_bytes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation of uint8 ``images`` scaled to [0, 1],
    accumulated in float64 over row chunks (two passes: the mean, then the squared
    deviations, as ``np.std`` computes them)."""
    n = len(images)
    d = int(np.prod(images.shape[1:], dtype=np.int64))
    chunks = list(iter_chunks(n, 8 * d, chunk_bytes))
    total = np.zeros(d)
    for lo, hi in chunks:
        total += (images[lo:hi].reshape(hi - lo, d) / 255.0).sum(axis=0)
    mean = total / n
    sq = np.zeros(d)
    for lo, hi in chunks:
        dev = images[lo:hi].reshape(hi - lo, d) / 255.0 - mean
        sq += np.einsum("ij,ij->j", dev, dev)
    return mean, np.sqrt(sq / n)


def fit(images: np.ndarray, labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
        *, c: float = 0.1, seed: int = 0, max_images: int | None = DEFAULT_MAX_IMAGES,
        chunk_bytes: int | None = None) -> DigitClassifier:
    """Fit on (images, labels) -> a :class:`DigitClassifier` with its validation accuracy.

    ``images`` (uint8 [N, H, W, C]) may be memory-mapped. Only the rows of
    :func:`fit_rows` (``max_images`` of them, seeded by ``seed``; all when N is smaller)
    are read, chunk by chunk; they are standardised chunk by chunk into the solver's
    float64 matrix. Memory: ``max_images x H*W*C x 9`` bytes (60,000 ImageNet32 images:
    1.7 GB) plus the solver's work (a few float64 ``[rows, classes]`` arrays), whatever N
    is. ``max_images=None`` fits on every row. ``val_images`` are labelled in chunks
    (:meth:`DigitClassifier.predict`).
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"the classifier got {len(images)} images but {len(labels)} labels")
    rows = fit_rows(len(images), max_images, seed)
    sub = take_rows(images, rows, chunk_bytes=chunk_bytes)  # uint8, 1/8 of the solver's matrix
    mean, std = _moments(sub, chunk_bytes)
    scale = std + 1e-3
    # float64 solver input: a pool below max_images gets exactly the whole-pool fit.
    x = np.empty((len(sub), mean.size))
    for lo, hi in iter_chunks(len(sub), 8 * mean.size, chunk_bytes):
        x[lo:hi] = (sub[lo:hi].reshape(hi - lo, -1) / 255.0 - mean) / scale
    del sub
    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit(x, labels[rows])
    del x
    clf = DigitClassifier(model.coef_, model.intercept_, model.classes_, mean, scale,
                          tuple(images.shape[1:]), float("nan"))
    clf.validation_accuracy = float(np.mean(clf.predict(val_images, chunk_bytes=chunk_bytes)
                                            == np.asarray(val_labels)))
    return clf


def load(path) -> DigitClassifier:
    z = np.load(path)
    return DigitClassifier(z["weight"], z["bias"], z["classes"], z["mean"], z["scale"],
                           tuple(int(v) for v in z["shape"]), float(z["validation_accuracy"]))


def histogram(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Label frequencies over ``classes`` (sums to 1)."""
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    return counts / max(1.0, counts.sum())
