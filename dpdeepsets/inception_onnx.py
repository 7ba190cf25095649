"""The FID Inception as an ONNX file, exported once from the bundled TorchScript, run by ONNX Runtime.

Why: on a CPU, ONNX Runtime runs the same pool3 network markedly faster than torch
(``benchmarks/inception_throughput.py`` measures both in one run) while its features agree
with torch's to rounding (``tests/unit/test_inception_onnx.py``).  The TorchScript file stays
the reference; this module only derives from it.

The cache
---------
The export takes seconds, so it is done at first use and kept in a directory the caller
names (the pipeline: ``{results_dir}/cache/inception``).  The file name holds the SHA-1
of the source TorchScript, the torch version that exported it and the opset, so a file
made from another network or by another exporter is never picked up.  Beside it a
``.sha256`` file in ``sha256sum`` format holds the checksum of its bytes, checked at every
load: a missing or mismatching checksum (a truncated or corrupted file) means re-export.
Both are written atomically (:func:`dpdeepsets.io.atomic_path`), and the export runs under
a lock file so that jobs starting together export once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path

from dpdeepsets.fid_inception import INCEPTION_SIZE, TORCHSCRIPT_SHA1, bundled_inception_path
from dpdeepsets.io import atomic_path

__all__ = ["OPSET", "cached_onnx_model", "export_onnx", "installed", "onnx_cache_path", "onnx_session"]

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "pool3"


def installed() -> bool:
    """Whether ONNX Runtime (to run) and onnx (which torch needs to export) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def onnx_cache_path(cache_dir, source_sha1: str) -> Path:
    """Where the export of the TorchScript with SHA-1 ``source_sha1`` is cached."""
    exporter = f"torch{importlib.metadata.version('torch')}-torchscript-opset{OPSET}"
    return Path(cache_dir) / f"inception-pool3-{source_sha1}-{exporter}.onnx"


def export_onnx(torchscript_path, dest) -> None:
    """Export the pool3 TorchScript to ONNX at ``dest``: float32 [N,3,299,299] -> [N,2048].

    torch's TorchScript-based exporter (``dynamo=False``) takes the scripted module as it
    is; the batch axis is dynamic, so one file serves every batch size.
    """
    import torch

    with warnings.catch_warnings():
        # torch.jit.load and the TorchScript exporter are deprecated in torch >= 2.9 and say
        # so; the exporter also notes that a ScriptModule has no Python signature.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*no signature found.*", category=UserWarning)
        model = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
        torch.onnx.export(model, (torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE),), str(dest),
                          dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}})


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_verified(path: Path) -> bytes | None:
    """The cached file's bytes if its recorded SHA-256 matches them, else None."""
    try:
        recorded = _checksum_path(path).read_text().split()[0]
        data = path.read_bytes()
    except (OSError, IndexError):
        return None
    return data if hashlib.sha256(data).hexdigest() == recorded else None


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_onnx_model(torchscript_path, cache_dir, source_sha1: str) -> bytes:
    """The verified bytes of the ONNX export of ``torchscript_path``, exporting it if needed.

    ``source_sha1`` is the TorchScript's SHA-1 (the caller has it from verifying the file).
    Returns bytes rather than a path so that what was checked is what gets loaded.
    """
    path = onnx_cache_path(cache_dir, source_sha1)
    data = _read_verified(path)
    if data is not None:
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(path.name + ".lock")):
        data = _read_verified(path)  # another job may have exported it while we waited
        if data is None:
            with atomic_path(path) as tmp:
                export_onnx(torchscript_path, tmp)
                data = tmp.read_bytes()
            with atomic_path(_checksum_path(path)) as tmp:
                tmp.write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return data


def onnx_session(model: bytes, threads: int):
    """An ONNX Runtime CPU session of ``model`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    """``python -m dpdeepsets.inception_onnx CACHE_DIR``: export the bundled network into the
    cache (rule inception_onnx), so that the jobs that use it only load it."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dpdeepsets.inception_onnx CACHE_DIR", file=sys.stderr)
        return 2
    cached_onnx_model(bundled_inception_path(), args[0], TORCHSCRIPT_SHA1)
    print(f"wrote {onnx_cache_path(args[0], TORCHSCRIPT_SHA1)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
