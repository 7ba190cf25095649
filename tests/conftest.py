import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_tiny_config(results: Path, key: Path | None = None, *targets: str, extra=()) -> Path:
    """Run the tiny config locally (--cores 2) into ``results`` (with the noise key ``key``,
    or a fresh one made by the pipeline; ``extra`` config files after the tiny one; only
    ``targets`` if given); return it."""
    configs = ["config/test.yaml", *extra]
    if key is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        extra_cfg = results.parent / f"{results.name}_key.yaml"
        extra_cfg.write_text(f"privacy:\n  key_file: {key}\n")
        configs.append(str(extra_cfg))
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", *configs,
           "--config", f"results_dir={results}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


@pytest.fixture(scope="session")
def run_tiny_config():
    """The function that runs the tiny config into a given results directory."""
    return _run_tiny_config


@pytest.fixture(scope="session")
def tiny_key(tmp_path_factory):
    """The noise key the tests supply (privacy.key_file): same key, same results."""
    from dpdeepsets.noise import create_key

    return create_key(tmp_path_factory.mktemp("key") / "noise.key")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_key):
    """The tiny config run locally (--cores 2) once per session, with the tests' noise key;
    its results directory.

    Shared by tests/workflow/test_pipeline.py (artifact checks), test_determinism.py (a second
    run with the same key) and test_slurm.py (the same config through SLURM must give the same
    artifacts). Tests must not modify it.
    """
    return _run_tiny_config(tmp_path_factory.mktemp("pipeline") / "results", tiny_key)


@pytest.fixture(scope="session")
def tiny_unet():
    """A small randomly-initialised DDPM UNet with attention (1 channel, 16 px)."""
    from dpdeepsets.privacy_audit.dpsgd import tiny_unet

    return tiny_unet()


TARGETS = [r".*attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)", r"up_blocks\.\d+\.resnets\.\d+\.conv[12]"]
