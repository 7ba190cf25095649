"""Adding a method is one registry entry: a copy of ``base`` under another name, registered in
a copy of dpdeepsets/methods.py and nothing else, gets its sampling, scoring and report jobs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpdeepsets import methods as M
from dpdeepsets.config import load_schema
from dpdeepsets.dag import parse_dryrun_jobs

ROOT = Path(__file__).resolve().parents[2]

NEW_METHOD = '''
register(Method(
    "base_copy", "base model (copy)", "public_only", None,
    description="the base model without LoRA, registered a second time"))
'''


def test_schema_default_methods_are_registered():
    default = load_schema()["properties"]["evaluation"]["properties"]["methods"]["default"]
    assert sorted(default) == sorted(M.REGISTRY)  # the default evaluates every registered method
    assert "enum" not in load_schema()["properties"]["evaluation"]["properties"]["methods"]["items"]


@pytest.mark.slow
def test_a_new_method_needs_only_its_registry_entry(tmp_path):
    copy = tmp_path / "repo"
    for sub in ("dpdeepsets", "workflow", "config", "profiles"):
        shutil.copytree(ROOT / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "Snakefile", copy / "Snakefile")
    methods = copy / "dpdeepsets" / "methods.py"
    methods.write_text(methods.read_text() + NEW_METHOD)
    changed = [p.relative_to(copy) for p in copy.rglob("*") if p.is_file()
               and (ROOT / p.relative_to(copy)).read_bytes() != p.read_bytes()]
    assert changed == [Path("dpdeepsets/methods.py")]
    cfg = tmp_path / "methods.yaml"
    cfg.write_text("evaluation:\n  methods: [dpdeepsets, base, base_copy]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile", "config/test.yaml",
         str(cfg), "--config", f"results_dir={tmp_path / 'results'}"],
        cwd=copy, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(copy)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = parse_dryrun_jobs(proc.stdout)
    mine = {(j["rule"], j["wildcards"].get("method")) for j in jobs if j["wildcards"].get("method") == "base_copy"}
    assert mine == {("sample_public", "base_copy"), ("score", "base_copy")}
    [report] = [j for j in jobs if j["rule"] == "report"]
    assert any(f.endswith("eval/scores/base_copy.csv") for f in report["input"])
    [figure] = [j for j in jobs if j["rule"] == "sample_figure"]
    assert any("/samples/base_copy/all/eps0_seed0.npz" in f for f in figure["input"])
