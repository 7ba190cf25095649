import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run_tiny_config(results: Path) -> Path:
    """Run the tiny config locally (--cores 2) into ``results``; return it."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/test.yaml",
           "--config", f"results_dir={results}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


@pytest.fixture(scope="session")
def run_tiny_config():
    """The function that runs the tiny config into a given results directory."""
    return _run_tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config run locally (--cores 2) once per session; its results directory.

    Shared by tests/test_pipeline.py (artifact checks) and tests/test_slurm.py (the same
    config through SLURM must give the same artifacts). Tests must not modify it.
    """
    return _run_tiny_config(tmp_path_factory.mktemp("pipeline") / "results")


@pytest.fixture(scope="session")
def tiny_unet():
    """A small randomly-initialised DDPM UNet with attention (1 channel, 16 px)."""
    from dpdeepsets.diffusion import build_scheduler, build_unet

    torch.manual_seed(0)
    unet = build_unet(image_size=16, channels=1, block_out_channels=(16, 32), layers_per_block=1,
                      attention_levels=[1], norm_num_groups=8, attention_head_dim=8)
    # Non-zero weights everywhere (diffusers zero-inits some output convs).
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.eval().requires_grad_(False)
    return unet, build_scheduler(1000, "squaredcos_cap_v2")


TARGETS = [r".*attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)", r"up_blocks\.\d+\.resnets\.\d+\.conv[12]"]
