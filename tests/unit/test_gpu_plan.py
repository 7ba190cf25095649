"""benchmarks/gpu_plan.py runs end to end on a CPU with --quick: every stage is measured on
the paper-size UNet, every rule class of config/paper.yaml gets a GPU-hours line whose
number is its printed formula worked out, and the log starts with command, commit and date."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("bank_fit", "dpsgd_step", "ddim", "inception", "encoder", "hypernet")
PLAN = ("fit_bank_shard", "fit_public_pool_lora", "fit_baseline (DP-SGD)",
        "fit_baseline (PDA-DPMD public gradient)", "fit_nonprivate", "train_hypernet",
        "fit_embedder, embed", "sample, sample_reference, sample_public", "private_evolution",
        "Inception (in sample*, private_evolution, private_set_features)")


def _number(text):
    return float(text.replace(",", ""))


@pytest.mark.slow  # ~20 s on an idle 2-core CPU: the 35.7M-parameter UNet, Inception, ViT-B/32
def test_quick_cpu_run(tmp_path):
    log = tmp_path / "gpu_plan_cpu.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_plan.py", "--device", "cpu", "--quick",
                           "--threads", "1", "--log", str(log)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    lines = log.read_text().splitlines()
    assert lines[0].startswith("$ python benchmarks/gpu_plan.py --device cpu --quick")
    assert re.fullmatch(r"commit ([0-9a-f]{7,40}|unknown)( \(with uncommitted changes\))?", lines[1])
    assert re.fullmatch(r"date \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", lines[2])
    assert log.read_text() == out  # the log is what was printed
    assert "35,746,307 parameters" in out  # google/ddpm-cifar10-32's size

    rates = {}
    for stage in STAGES:
        m = re.search(rf"^  {stage} +([\d,.]+) (\S+)", out, flags=re.M)
        assert m, f"no measured line for {stage}:\n{out}"
        rates[stage] = _number(m.group(1))
        assert rates[stage] > 0

    hours, checked = {}, []
    for stage in PLAN:
        m = re.search(rf"^  {re.escape(stage)}: ([\d,.]+) GPU-h  \[(.*)\]$", out, flags=re.M)
        assert m, f"no plan line for {stage}:\n{out}"
        hours[stage] = _number(m.group(1))
        # single-rate lines: "... = WORK unit / RATE unit/s" -> hours = WORK / RATE / 3600
        single = re.fullmatch(r"[^/=]* = ([\d,]+) [\w-]+ / ([\d,.]+) [\w-]+/s", m.group(2))
        if single:
            expected = _number(single.group(1)) / _number(single.group(2)) / 3600
            assert hours[stage] == pytest.approx(expected, rel=2e-3, abs=0.006), stage
            checked.append(stage)
    m = re.search(r"^  fit_bank_shard: .*\[M 4096 x lora\.steps 150 x lora\.batch_size 32 = "
                  r"19,660,800 images", out, flags=re.M)
    assert m, out  # config/paper.yaml's bank: 4,096 subsets x 150 steps x 32 images
    total = re.search(r"^GPU-hours total: ([\d,.]+) on CPU", out, flags=re.M)
    assert total, out
    assert _number(total.group(1)) == pytest.approx(sum(hours.values()), abs=0.1)
    assert "without" not in total.group(0)  # every stage measured
    assert len(checked) >= 6, checked  # the formula check above ran on most lines


def test_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_plan.py", "--device", "cuda",
                           "--log", str(tmp_path / "x.log")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: --device cuda: no CUDA device is visible")
