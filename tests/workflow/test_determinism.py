"""Determinism: two runs of the tiny config with the same noise key (privacy.key_file) in two
results directories give byte-identical metrics.csv, on the same machine with the same --cores.

The first run is the session's ``tiny_run`` (tests/conftest.py); this module makes the
second, with the same key. Releases, adapters and the hypernetwork are compared too, so a
failure names the first stage that diverged. Accountant numbers (PRV: an FFT-based
numerical method) are compared to 1e-9 relative, everything else exactly.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, run_tiny_config, tiny_key):
    return run_tiny_config(tmp_path_factory.mktemp("determinism") / "results", tiny_key)


def _content(path: Path):
    """What a file holds: arrays for .npz / .safetensors (zip and header bytes carry
    timestamps or ordering that mean nothing), raw bytes otherwise."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in sorted(z.files)}
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return {k: t[k] for k in sorted(t)}
    return path.read_bytes()


def _equal(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    return x == y


def _same_content(a: Path, b: Path, pattern: str):
    files = sorted(p.relative_to(a) for p in a.glob(pattern) if p.is_file())
    assert files, f"no {pattern} under {a}"
    assert files == sorted(p.relative_to(b) for p in b.glob(pattern) if p.is_file())
    differ = [str(f) for f in files if not _equal(_content(a / f), _content(b / f))]
    assert not differ, f"differ between the two runs: {differ}"


@pytest.mark.slow
@pytest.mark.parametrize("pattern", [
    "base/unet/diffusion_pytorch_model.safetensors", "embeddings/*.npy", "subsets/*.npz",
    "lora/public_loras.safetensors", "release/**/*.json", "adapters/**/*.safetensors",
    "samples/**/*.npz", "features/**/*.npz", "eval/scores/*.csv"])
def test_stage_outputs_identical(tiny_run, second_run, pattern):
    _same_content(tiny_run, second_run, pattern)


@pytest.mark.slow
def test_hypernet_identical(tiny_run, second_run):
    import torch

    a = torch.load(tiny_run / "hypernet/hypernet.pt", weights_only=False)["state_dict"]
    b = torch.load(second_run / "hypernet/hypernet.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_metrics_csv_byte_identical(tiny_run, second_run):
    assert (tiny_run / "metrics.csv").read_bytes() == (second_run / "metrics.csv").read_bytes()
    # The ledger names each run's own files; everything else must agree (accountant epsilons
    # to 1e-9 relative: docs/privacy.md, "Reproducibility of accountant numbers").
    a, b = (pd.read_csv(r / "privacy_ledger.csv").drop(columns="file") for r in (tiny_run, second_run))
    exact = [c for c in a.columns if c != "accounted_epsilon"]
    pd.testing.assert_frame_equal(a[exact], b[exact], check_exact=True)
    np.testing.assert_allclose(a.accounted_epsilon, b.accounted_epsilon, rtol=1e-9)
