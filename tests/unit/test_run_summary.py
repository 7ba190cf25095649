"""benchmarks/run_summary.py: the hypernetwork's public validation table is the mean loss over the
proxy sets and its change against the base model, computed from the CSV and not invented."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # run_summary imports _header from its folder
    try:
        spec = importlib.util.spec_from_file_location("run_summary", ROOT / "benchmarks" / "run_summary.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def _table():
    rows = []
    for proxy, base in (("q0", 0.10), ("q1", 0.20)):
        rows += [dict(proxy=proxy, epsilon=0.0, method="base", loss=base),
                 dict(proxy=proxy, epsilon=0.0, method="mean_public_lora", loss=base * 1.01),
                 dict(proxy=proxy, epsilon=1.0, method="dpdeepsets", loss=base * 0.98),
                 dict(proxy=proxy, epsilon=0.25, method="dpdeepsets", loss=base * 0.99)]
    return pd.DataFrame(rows)


def test_validation_means_and_relative_change():
    lines = _module().validation(_table())
    body = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| method")]
    assert body == [
        "| base | 0 | 0.15000 | +0.00 % |",
        "| mean_public_lora | 0 | 0.15150 | +1.00 % |",
        "| dpdeepsets | 0.25 | 0.14850 | -1.00 % |",  # epsilon ascending within a method
        "| dpdeepsets | 1 | 0.14700 | -2.00 % |",
    ]
    assert "2 public proxy sets" in lines[1]


def test_validation_needs_the_base_rows():
    t = _table()
    with pytest.raises(ValueError, match="no 'base' rows"):
        _module().validation(t[t.method != "base"])
    with pytest.raises(ValueError, match="lacks the columns \\['loss'\\]"):
        _module().validation(t.drop(columns="loss"))


def test_a_malformed_validation_csv_is_one_line_naming_the_file(tmp_path):
    """A bad hypernet/validation.csv beside a good summary gets one line that names it, not a traceback."""
    res = tmp_path / "res"
    (res / "hypernet").mkdir(parents=True)
    for name in ("summary.csv", "metrics.csv"):  # a real run's (the committed size-control run)
        shutil.copy(ROOT / "benchmarks/results/shift_control" / name, res / name)
    _table().drop(columns="loss").to_csv(res / "hypernet" / "validation.csv", index=False)
    proc = subprocess.run([sys.executable, "benchmarks/run_summary.py", str(res)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {res / 'hypernet' / 'validation.csv'}: hypernet/validation.csv lacks the columns ['loss']"]
