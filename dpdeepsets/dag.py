"""The privacy data flow of the Snakemake workflow, checked on its job DAG.

Static (:func:`check_private_flow`): on the job DAG of a dry run (:func:`parse_dryrun_jobs`,
:func:`job_edges`), every path from a job that reads private data to a job that produces
a released artifact must pass through a job of a DP rule (the release, or a DP-SGD fit
with an accountant).  Used by ``tests/workflow/test_privacy_dag.py``.  The runtime
counterpart (what each job really opened) is :mod:`dpdeepsets.access`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["parse_dryrun_jobs", "job_label", "rule_of", "job_edges", "check_private_flow"]

_RULE_RE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_FIELD_RE = re.compile(r"^\s+(input|output|log|jobid|wildcards): (.*)$")


def parse_dryrun_jobs(text: str) -> list[dict]:
    """Jobs of a ``snakemake -n`` (dry-run) listing: rule, jobid, wildcards, input and output files.

    Snakemake prints every job of the DAG as a block ``rule NAME:`` (``localrule`` for local
    rules) followed by indented ``input: a, b``, ``output: ...``, ``jobid: N`` and
    ``wildcards: k=v, ...`` lines.  File lists are split on ", " (the pipeline's paths contain
    no commas).  Returns a list of dicts with keys rule, jobid, wildcards (dict), input
    (list), output (list), log (list).
    """
    jobs: list[dict] = []
    cur = None
    for line in text.splitlines():
        m = _RULE_RE.match(line)
        if m:
            cur = {"rule": m.group(1), "jobid": None, "wildcards": {}, "input": [], "output": [],
                   "log": []}
            jobs.append(cur)
            continue
        if cur is None:
            continue
        f = _FIELD_RE.match(line)
        if f:
            key, val = f.group(1), f.group(2).strip()
            if key == "jobid":
                cur["jobid"] = int(val)
            elif key == "wildcards":
                cur["wildcards"] = dict(kv.split("=", 1) for kv in val.split(", "))
            else:
                cur[key] = [p for p in val.split(", ") if p]
        elif line and not line[0].isspace():
            cur = None  # "Shell command: ...", timestamps, job stats: the block has ended
    return jobs


def job_label(job: dict) -> str:
    """``rule`` or ``rule[k=v,...]`` (wildcards sorted): unique per job of one DAG."""
    wc = job.get("wildcards") or {}
    if not wc:
        return job["rule"]
    return job["rule"] + "[" + ",".join(f"{k}={wc[k]}" for k in sorted(wc)) + "]"


def rule_of(label: str) -> str:
    """The rule name of a :func:`job_label`."""
    return str(label).split("[", 1)[0]


def job_edges(jobs: Iterable[dict]) -> set[tuple[str, str]]:
    """File-level dependency edges (producer label, consumer label) between jobs.

    There is an edge A -> B iff some output file of A is an input file of B.
    """
    jobs = list(jobs)
    producer = {}
    for j in jobs:
        for f in j["output"]:
            producer[f] = job_label(j)
    return {(producer[f], job_label(j)) for j in jobs for f in j["input"] if f in producer}


def check_private_flow(
    edges: Iterable[tuple[str, str]],
    private_sources: Iterable[str],
    dp_rules: Iterable[str],
    released_rules: Iterable[str],
    rule_of: Callable[[str], str] = rule_of,
) -> list[list[str]]:
    """Paths by which private data reaches a released artifact without a DP step.

    ``edges``: (producer, consumer) job pairs; ``private_sources``: the jobs that read private
    data directly; ``dp_rules``: rules whose outputs are differentially private releases of
    their inputs (the DP release, DP-SGD-family training with an accountant); ``released_rules``:
    rules whose outputs are published.  ``rule_of`` maps a job to its rule.

    A DP job blocks the flow (its outputs are accounted for), including when it is itself a
    source.  Every other source's data flows along all edges; each released job it reaches
    gives one violating path [source, ..., released job] (a shortest one).  Returns the list
    of violating paths, empty when the flow is clean.
    """
    dp, rel = set(dp_rules), set(released_rules)
    succ: dict[str, list[str]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    violations = []
    for src in sorted(set(private_sources)):
        if rule_of(src) in dp:
            continue
        parent = {src: None}
        queue = deque([src])
        while queue:
            node = queue.popleft()
            if rule_of(node) in rel:
                path, x = [], node
                while x is not None:
                    path.append(x)
                    x = parent[x]
                violations.append(path[::-1])
            for nxt in sorted(succ.get(node, ())):
                if nxt not in parent and rule_of(nxt) not in dp:
                    parent[nxt] = node
                    queue.append(nxt)
    return violations
