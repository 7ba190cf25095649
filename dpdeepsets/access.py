"""What a stage process really opened: the runtime half of the privacy-flow proof.

The DAG test (:mod:`dpdeepsets.dag`) trusts each rule's declared inputs; a script that opens
an undeclared private file would pass it. :func:`record` (installed by
:func:`dpdeepsets.cli.run`, the entry point of every stage script) adds a Python audit hook
(:pep:`578`) that notes every file the process opens (``open`` events: ``open()``,
``os.open``, numpy, torch, PIL, zipfile) and every rename, and at exit writes them to
``<log>.access.json`` beside the job's log (the file its stderr goes to; or the path in
``DPDEEPSETS_ACCESS_LOG``), with ``startup_s``: the seconds from the process's start to the
first data file it opened (interpreter start and imports; ``benchmarks/job_overhead.py`` sums
it over a run). ``tests/workflow/test_privacy_runtime.py`` reads these records of a whole
run and fails when a job that writes a released artifact read a private file without being
a DP rule.

Limits, stated: files opened by native code that bypasses Python's I/O (safetensors reads
adapters and LoRA banks in Rust) are not seen; every private artifact of the pipeline is an
``.npz``/``.npy`` read through numpy, which is. Files of the interpreter and of installed
packages are left out of the record.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

_opened: dict[str, str] = {}
_renamed: list[list[str]] = []
_installed = False
_startup_s: float | None = None  # process start -> first data file opened
_SKIP = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
_SYSTEM = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/lib", "/opt/")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _path(p) -> str | None:
    if isinstance(p, int):
        return None
    try:
        p = os.fsdecode(p)
    except TypeError:
        return None
    return os.path.abspath(p)


def _hook(event: str, args) -> None:
    if event == "open":
        path = _path(args[0])
        if path is None:
            return
        global _startup_s
        if _startup_s is None and _keep(path):
            _startup_s = _since_process_start()
        mode, flags = args[1], args[2]
        writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                  else bool(isinstance(flags, int) and flags & _WRITE_FLAGS))
        if writes or path not in _opened:
            _opened[path] = "w" if writes else _opened.get(path, "r")
    elif event in ("os.rename", "os.replace"):
        src, dst = _path(args[0]), _path(args[1])
        if src and dst:
            _renamed.append([src, dst])


def _since_process_start() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as fh:  # field 22: start time in clock ticks after boot
            start = int(fh.read().rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", "rb") as fh:
            return float(fh.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


def destination() -> str | None:
    """Where the record goes: $DPDEEPSETS_ACCESS_LOG, else ``<stderr's file>.access.json``."""
    env = os.environ.get("DPDEEPSETS_ACCESS_LOG")
    if env:
        return env
    try:
        target = os.readlink("/proc/self/fd/2")
    except OSError:
        return None
    return target + ".access.json" if os.path.isfile(target) else None


def _keep(path: str) -> bool:
    real = os.path.realpath(path)
    return not (real.startswith(_SKIP) or real.startswith(_SYSTEM) or "/site-packages/" in real
                or real.endswith((".py", ".pyc", ".access.json")))


def snapshot() -> dict:
    """The record so far: files read, files written (directly or by a rename), argv."""
    reads = sorted(p for p, m in _opened.items() if m == "r" and _keep(p))
    writes = sorted({p for p, m in _opened.items() if m == "w" and _keep(p)}
                    | {dst for _, dst in _renamed if _keep(dst)})
    return {"argv": list(sys.argv), "cwd": os.getcwd(), "read": reads, "written": writes,
            "startup_s": _startup_s}


def _write() -> None:
    dest = destination()
    if dest is None:
        return
    try:
        with open(dest, "w") as fh:  # after snapshot(): the record does not list itself
            json.dump(snapshot(), fh, indent=1)
    except OSError:
        pass


def record() -> None:
    """Start recording this process's file accesses (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.addaudithook(_hook)
    atexit.register(_write)


def undeclared_reads(record: dict, inputs: list[str], outputs: list[str], root: str) -> list[str]:
    """Files under ``root`` (the results directory) that a job read without declaring them:
    not an input, not inside an input directory, not one of its own outputs (or their
    checkpoint directories)."""
    root = os.path.abspath(root)
    allowed = [os.path.abspath(p) for p in (*inputs, *outputs)]
    bad = []
    for path in record["read"]:
        if not path.startswith(root + os.sep):
            continue
        if not any(path == a or path.startswith(a + os.sep) or path.startswith(a + ".ckpt" + os.sep)
                   for a in allowed):
            bad.append(path)
    return bad
