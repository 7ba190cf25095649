"""Every relative link in the repository's Markdown (README, docs/, config/, benchmarks/) points
to a file that exists, and every #anchor into a Markdown file names one of its headings, so a doc
cannot keep citing a log, a section or a figure that moved or was never committed."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # a copy of the tree without .git
        out = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.md")
               if not {".venv", "results", ".snakemake", ".git"} & set(p.relative_to(ROOT).parts[:1])]
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    heads, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            heads.append(slug(line.lstrip("#")))
    return set(heads)


def broken(path: Path) -> list[str]:
    out = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file) if file else path
        if not dest.exists():
            out.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target} (no heading #{anchor} in {dest.name})")
    return out


def test_there_is_markdown_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in _markdown()}
    assert {"README.md", "docs/hypernet.md", "benchmarks/README.md"} <= names


@pytest.mark.parametrize("path", _markdown(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    assert broken(path) == []


def test_the_check_catches_a_missing_file_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## The premise test: data never seen\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#the-premise-test-data-never-seen) [gone](c.log) "
                   "[moved](a.md#old-section) [web](https://example.org/x)\n")
    assert broken(doc) == ["c.log (no such file)", "a.md#old-section (no heading #old-section in a.md)"]
