"""Atomic artifact writing, JSON helpers and logging set-up shared by every stage.

Every artifact the pipeline writes goes through :func:`atomic_path` or
:func:`atomic_dir`: the bytes land in a temporary sibling first and are renamed into
place only when complete, so a killed job never leaves a half-written file that a rerun
(or Snakemake) would trust.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` (a directory) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (Snakemake, SLURM, ``kill``) into ``SystemExit(143)``.

    Python's default SIGTERM action ends the process without unwinding, which would leave
    the temporary files of :func:`atomic_path` / :func:`atomic_dir` behind; raising instead
    runs their cleanup, so a terminated job leaves neither an output nor a temp file.
    (SIGKILL cannot be caught: then only the temp + rename scheme protects the output.)
    """
    import signal

    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically; non-finite floats become strings."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    with open(path) as fh:
        return json.load(fh)


def parse_epsilon(value) -> float:
    """Parse an epsilon as written in configs, wildcards and ledgers ('inf' allowed)."""
    if isinstance(value, str) and value.strip().lower() in {"inf", "infinity"}:
        return math.inf
    return float(value)


def format_epsilon(eps: float) -> str:
    """Canonical wildcard spelling of an epsilon: 'inf', or repr without trailing zeros."""
    eps = parse_epsilon(eps)
    if math.isinf(eps):
        return "inf"
    return f"{eps:g}"


def setup_logging(name: str) -> logging.Logger:
    """Log to stderr (Snakemake redirects it into the rule's log file)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return logging.getLogger(name)


class Stopwatch:
    """Context manager that logs how long a stage took."""

    def __init__(self, log: logging.Logger, what: str):
        self.log, self.what = log, what

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.log.info("%s took %.1f s", self.what, self.seconds)
        return False


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads to the cores Snakemake gave this job."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def pick_device():
    """CUDA when a GPU is visible (e.g. a SLURM job with --gres=gpu), else the CPU.

    Set DPDEEPSETS_DEVICE=cpu (or cuda:1, ...) to override. The public random draws (minibatch
    order, diffusion draws, sampling noise) come from CPU generators, so a seed gives the same
    draws on either device; DP-SGD's Gaussian noise is drawn on the job's device from the
    noise source, so keyed DP-SGD noise differs between a CPU and a GPU run.
    """
    import torch

    name = os.environ.get("DPDEEPSETS_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
