"""Every log under benchmarks/results/ begins with the command that wrote it, its commit and its date.

A number in a doc names its log; the log's first lines let a reader rerun it and see whether
it is stale.  Within the first four lines: a command (``$ python ...``, ``$ bash ...``,
``$ snakemake ...`` or ``$ make ...``), a commit (``commit <hash>`` or ``committed in <hash>``)
that exists in this repository's history, and an ISO date.  The scripts write these lines
with ``benchmarks/_header.py``; the last test checks that what it writes passes here.
"""

from __future__ import annotations

import datetime
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOGS = sorted((ROOT / "benchmarks" / "results").glob("*.log"))
HEAD_LINES = 4

COMMAND = re.compile(r"^\$ (?:\w+=\S*\s+)*(?:\S*/)?(?:python3?|bash|snakemake|make)(?:\s|$)")
COMMIT = re.compile(r"\bcommit(?:ted in)?:?\s+([0-9a-f]{7,40})\b")
DATE = re.compile(r"(?<![\d-])(\d{4}-\d{2}-\d{2})(?![\d-])")  # also inside 2026-12-07T01:07:17


def head(text: str) -> list[str]:
    return text.splitlines()[:HEAD_LINES]


def problems(lines: list[str]) -> list[str]:
    """What the header ``lines`` lack: command, commit, date."""
    missing = []
    if not any(COMMAND.match(line) for line in lines):
        missing.append("a command line ('$ python ...', '$ bash ...', '$ snakemake ...', '$ make ...')")
    if not any(COMMIT.search(line) for line in lines):
        missing.append("a commit ('commit <7-40 hex>' or 'committed in <hash>')")
    dates = [m for line in lines for m in DATE.findall(line)]
    if not dates:
        missing.append("an ISO date (YYYY-MM-DD)")
    for d in dates:
        try:
            datetime.date.fromisoformat(d)
        except ValueError:
            missing.append(f"a valid date (got {d})")
    return missing


def test_there_are_logs():
    assert LOGS, "no benchmarks/results/*.log found"


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.name)
def test_log_begins_with_command_commit_and_date(log):
    lines = head(log.read_text(errors="replace"))
    missing = problems(lines)
    assert not missing, (f"{log.relative_to(ROOT)}: the first {HEAD_LINES} lines lack " + "; ".join(missing)
                         + "\n" + "\n".join(lines))


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.name)
def test_the_commit_is_in_the_history(log):
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode:
        pytest.skip("not a git checkout")
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("shallow clone: old commits are missing")
    lines = head(log.read_text(errors="replace"))
    hashes = [m for line in lines for m in COMMIT.findall(line)]
    assert hashes, f"{log.name}: no commit in the first {HEAD_LINES} lines"
    for h in hashes:
        assert _git("cat-file", "-e", f"{h}^{{commit}}").returncode == 0, \
            f"{log.name}: commit {h} is not in this repository's history"


def test_problems_names_what_is_missing():
    assert problems(["$ python benchmarks/x.py", "commit abc1234", "date 2026-12-07T01:00:00+00:00"]) == []
    assert len(problems(["table", "1 2 3"])) == 3
    assert problems(["# 2026-12-03 python x.py", "commit abc1234"])[0].startswith("a command")
    assert problems(["$ python x.py", "commit 1234", "2026-12-03"])[0].startswith("a commit")  # too short
    assert problems(["$ python x.py", "commit abc1234", "2026-13-40"]) == ["a valid date (got 2026-13-40)"]


def test_the_scripts_header_passes():
    spec = importlib.util.spec_from_file_location("_header", ROOT / "benchmarks" / "_header.py")
    header = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(header)
    lines = header.log_header(ROOT / "benchmarks" / "scale.py", ["--n", "1000", "--log", "a b.log"])
    assert lines[0] == "$ python benchmarks/scale.py --n 1000 --log 'a b.log'"
    assert re.fullmatch(r"commit ([0-9a-f]{7,40}( \(with uncommitted changes\))?|unknown)", lines[1])
    assert re.fullmatch(r"date \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", lines[2])
    if lines[1] != "commit unknown":
        assert problems(lines) == []
    assert header.log_header("benchmarks/cpu_check.sh", [], program="bash")[0] == "$ bash benchmarks/cpu_check.sh"
