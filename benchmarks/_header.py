"""The first three lines of every benchmark log: the command that wrote it, the commit, the date.

    $ python benchmarks/scale.py --n 100000
    commit 44158c2 (with uncommitted changes)
    date 2026-12-07T01:07:17+00:00

With them a reader can rerun the log and see whether it is stale
(``tests/unit/test_benchmark_logs.py`` checks that every log under ``results/`` has them).
The scripts are run as ``python benchmarks/x.py`` from the repository root, so Python puts
``benchmarks/`` first on ``sys.path`` and ``from _header import log_header`` finds this file.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(script, argv: list[str] | None = None, program: str = "python") -> str:
    """``$ python benchmarks/x.py ARGS``: ``script`` is the script's ``__file__``, ``argv`` its
    arguments (default: this process's ``sys.argv[1:]``), quoted so that the line can be pasted."""
    path = Path(script).resolve()
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else list(argv)
    return "$ " + shlex.join([program, str(path), *args])


def commit() -> str:
    """The short hash of HEAD, with a note when tracked files differ from it; "unknown" without git.

    ``$BENCHMARK_COMMIT``, when set, is taken as it is: for a copy of the tree without its
    ``.git`` (a lent GPU machine), set it where the tree came from, e.g.
    ``BENCHMARK_COMMIT="$(git rev-parse --short HEAD)" bash benchmarks/gpu_check.sh``.
    """
    if os.environ.get("BENCHMARK_COMMIT"):
        return os.environ["BENCHMARK_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def log_header(script, argv: list[str] | None = None, program: str = "python") -> list[str]:
    """The three header lines (without newlines): command, ``commit <hash>``, ``date <ISO 8601>``."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return [command(script, argv, program), f"commit {commit()}", f"date {now}"]


def print_log_header(script, argv: list[str] | None = None) -> None:
    """Print the header, for the scripts whose stdout is the log."""
    print("\n".join(log_header(script, argv)), flush=True)


if __name__ == "__main__":
    # For shell scripts: ``python benchmarks/_header.py bash benchmarks/cpu_check.sh ARGS``.
    print("\n".join(log_header(sys.argv[2], sys.argv[3:], program=sys.argv[1])))


def write_log(path, lines: list[str]) -> Path:
    """Write ``lines`` (the header first) to ``path`` atomically (temp file + rename), so an
    interrupted benchmark never leaves half a log; returns the path."""
    log = Path(path)
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = log.with_name(f".{log.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(log)
    return log


def print_log(lines: list[str], log=None) -> None:
    """Print ``lines`` (the header first) and, when ``log`` is a path, also write them there
    with :func:`write_log` and say so."""
    print("\n".join(lines))
    if log:
        print(f"wrote {write_log(log, lines)}")
