"""Interruption and resume: periodic checkpoints, kills mid-training, atomic artifacts.

Library level: each training loop is interrupted after a checkpoint (an exception raised
from the checkpoint hook, i.e. the process "dies" between checkpoints), resumed from a
fresh start, and compared with an uninterrupted run of the same seed: bit-identical.
Script level: fit_bank_shard.py and train_hypernet.py are killed (SIGTERM, SIGKILL) once their
first checkpoint exists; no output and nothing a rerun could take for it may be left; the
rerun resumes from the checkpoint, completes and removes the checkpoint.
"""

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dpdeepsets import diffusion, hypernet, lora
from dpdeepsets.checkpoint import Checkpointer
from tests.conftest import TARGETS

ROOT = Path(__file__).resolve().parents[2]


class Killed(Exception):
    """Stands for the process dying."""


class KillAfter(Checkpointer):
    """A checkpointer whose process 'dies' after ``kill_after`` completed steps."""

    def __init__(self, directory, every, kill_after):
        super().__init__(directory, every)
        self.kill_after = kill_after

    def step_done(self, step, total, state_fn):
        super().step_done(step, total, state_fn)
        if step + 1 == self.kill_after:
            raise Killed


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded: bit-identity needs a fixed thread count, and on a busy 2-core
    machine two OpenMP threads spend seconds per step spinning at barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ library level

def _base_run(unet0, scheduler, images, ckpt):
    unet = copy.deepcopy(unet0).requires_grad_(True)
    ema = diffusion.train_base(unet, scheduler, images, steps=8, batch_size=4, lr=2e-3,
                               ema_decay=0.9, seed=3, warmup_steps=2, checkpoint=ckpt)
    return unet.state_dict(), ema.state_dict()


def test_base_resume_is_bit_identical(tiny_unet, tmp_path):
    unet0, scheduler = tiny_unet
    images = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref_model, ref_ema = _base_run(unet0, scheduler, images, None)
    with pytest.raises(Killed):  # checkpoint after 3 steps, dies after 5
        _base_run(unet0, scheduler, images, KillAfter(tmp_path / "ck", 3, 5))
    assert (tmp_path / "ck" / "state.pt").exists()
    model, ema = _base_run(unet0, scheduler, images, Checkpointer(tmp_path / "ck", 3))
    assert max_abs_diff(model, ref_model) == 0.0
    assert max_abs_diff(ema, ref_ema) == 0.0


def _lora_run(unet0, scheduler, subsets, ckpt, lr=1e-2):
    model = copy.deepcopy(unet0)
    targets = lora.find_targets(model, TARGETS, 2)
    layers = lora.attach(model, targets, lora.make_basis(targets, 2, 0), 1.0)
    return lora.fit_loras(model, scheduler, layers, targets, subsets, [4, 7, 9], rank=2,
                          steps=7, batch_size=4, lr=lr, seed=5, checkpoint=ckpt)


def _lora_subsets():
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(12, 1, 16, 16, generator=gen) * 2 - 1 for _ in range(3)]


def test_lora_fit_resume_is_bit_identical(tiny_unet, tmp_path):
    unet0, scheduler = tiny_unet
    subsets = _lora_subsets()
    ref = _lora_run(unet0, scheduler, subsets, None)
    with pytest.raises(Killed):
        _lora_run(unet0, scheduler, subsets, KillAfter(tmp_path / "ck", 2, 5))
    resumed = _lora_run(unet0, scheduler, subsets, Checkpointer(tmp_path / "ck", 2))
    assert max_abs_diff(resumed, ref) == 0.0


def test_checkpoint_from_other_settings_is_ignored(tiny_unet, tmp_path, caplog):
    unet0, scheduler = tiny_unet
    subsets = _lora_subsets()
    with pytest.raises(Killed):
        _lora_run(unet0, scheduler, subsets, KillAfter(tmp_path / "ck", 2, 5), lr=1e-2)
    ref = _lora_run(unet0, scheduler, subsets, None, lr=3e-2)
    with caplog.at_level(logging.INFO, logger="dpdeepsets.checkpoint"):
        other = _lora_run(unet0, scheduler, subsets, Checkpointer(tmp_path / "ck", 2), lr=3e-2)
    assert "ignoring checkpoint" in caplog.text and "resuming" not in caplog.text
    assert max_abs_diff(other, ref) == 0.0


def _hypernet_problem(tiny_unet):
    targets = lora.find_targets(tiny_unet[0], TARGETS, 2)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(96, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    members = np.arange(96).reshape(8, 12)
    gen = torch.Generator().manual_seed(0)
    bank = {t.name: torch.randn(8, t.out_features, 2, generator=gen) for t in targets}
    return targets, emb, members, bank


def _hypernet_run(problem, ckpt):
    targets, emb, members, bank = problem
    torch.manual_seed(0)
    net = hypernet.HyperNet(8, targets, 2, clip_norm=1.0, d_model=32, layers=1, heads=2)
    net.set_target_stats(bank)
    curve = hypernet.train_hypernet(net, emb, members, bank, [0.0, 0.5], steps=12, batch_size=4,
                                    lr=3e-3, weight_decay=1e-4, subsample_fraction=0.75, seed=2,
                                    checkpoint=ckpt)
    return net.state_dict(), curve


def test_hypernet_resume_is_bit_identical(tiny_unet, tmp_path):
    problem = _hypernet_problem(tiny_unet)
    ref, ref_curve = _hypernet_run(problem, None)
    with pytest.raises(Killed):
        _hypernet_run(problem, KillAfter(tmp_path / "ck", 4, 7))
    state, curve = _hypernet_run(problem, Checkpointer(tmp_path / "ck", 4))
    assert max_abs_diff(state, ref) == 0.0
    assert curve == ref_curve


# ------------------------------------------------------------------ script level

def _write_config(path, sections):
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture(scope="module")
def lora_inputs(tmp_path_factory, tiny_unet):
    from dpdeepsets.data import save_split

    d = tmp_path_factory.mktemp("lora_inputs")
    unet, scheduler = tiny_unet
    diffusion.save_base(d / "base", unet, scheduler)
    rng = np.random.default_rng(0)
    save_split(str(d / "public.npz"), rng.integers(0, 256, (64, 16, 16, 1), dtype=np.uint8))
    np.savez(d / "subsets.npz", members=rng.integers(0, 64, (4, 16)))
    cfg = _write_config(d / "config.yaml", {"lora": {
        "rank": 2, "alpha": 2, "steps": 60, "batch_size": 2, "shard_size": 4,
        "checkpoint_every": 5, "target_modules": TARGETS}})
    return d, cfg


@pytest.fixture(scope="module")
def hypernet_inputs(tmp_path_factory, tiny_unet):
    d = tmp_path_factory.mktemp("hypernet_inputs")
    targets, emb, members, bank = _hypernet_problem(tiny_unet)
    np.save(d / "embeddings.npy", emb)
    np.savez(d / "subsets.npz", members=members)
    basis = lora.make_basis(targets, 2, 0)
    lora.save_lora_bank(d / "bank.safetensors", bank, basis, list(range(8)),
                        {"rank": 2, "alpha": 2})
    from dpdeepsets.data import save_split

    unet, scheduler = tiny_unet
    diffusion.save_base(d / "base", unet, scheduler)
    rng = np.random.default_rng(1)
    save_split(str(d / "public.npz"), rng.integers(0, 256, (96, 16, 16, 1), dtype=np.uint8))
    save_split(str(d / "validation.npz"), rng.integers(0, 256, (24, 16, 16, 1), dtype=np.uint8))
    np.save(d / "validation_embeddings.npy", emb[:24])
    np.savez(d / "proxies.npz", members=np.arange(24).reshape(2, 12))
    cfg = _write_config(d / "config.yaml", {
        "hypernet": {"d_model": 32, "layers": 1, "heads": 2, "steps": 400, "batch_size": 4,
                     "checkpoint_every": 20, "validation_draws": 1},
        "subsets": {"set_size": 12}, "privacy": {"epsilons": [1.0, 16.0]}})
    return d, cfg


def _lora_cmd(inputs, out):
    d, cfg = inputs
    return [sys.executable, "workflow/scripts/fit_bank_shard.py", "--configfile", str(cfg),
            "--base", str(d / "base"), "--public", str(d / "public.npz"),
            "--subsets", str(d / "subsets.npz"), "--shard", "0", "--out", str(out)]


def _hypernet_cmd(inputs, out):
    d, cfg = inputs
    return [sys.executable, "workflow/scripts/train_hypernet.py", "--configfile", str(cfg),
            "--embeddings", str(d / "embeddings.npy"), "--subsets", str(d / "subsets.npz"),
            "--bank", str(d / "bank.safetensors"), "--base", str(d / "base"),
            "--public", str(d / "public.npz"), "--validation", str(d / "validation.npz"),
            "--validation-embeddings", str(d / "validation_embeddings.npy"),
            "--proxies", str(d / "proxies.npz"), "--out", str(out),
            "--out-summary", str(out.with_suffix(".json")),
            "--out-validation", str(out.with_suffix(".csv"))]


ENV = {**os.environ, "DPDEEPSETS_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def _kill_once_checkpointed(cmd, ckpt: Path, sig, log_path):
    """Start ``cmd``, wait until its first checkpoint exists, then send ``sig``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 120
    while not (ckpt / "state.pt").exists():
        assert proc.poll() is None, f"finished before its first checkpoint: {log_path.read_text()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    return rc


STAGES = {"fit_bank_shard": (_lora_cmd, "lora_inputs", "shard0.safetensors"),
          "train_hypernet": (_hypernet_cmd, "hypernet_inputs", "hypernet.pt")}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.slow
def test_killed_stage_leaves_nothing_and_rerun_resumes(stage, sig, request, tmp_path):
    make_cmd, inputs_fixture, name = STAGES[stage]
    inputs = request.getfixturevalue(inputs_fixture)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / name
    ckpt = out_dir / f"{name}.ckpt"
    cmd = make_cmd(inputs, out)

    rc = _kill_once_checkpointed(cmd, ckpt, sig, tmp_path / "killed.log")
    assert rc == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    left = sorted(p.name for p in out_dir.iterdir())
    assert not out.exists() and not out.with_suffix(".json").exists()
    if sig == signal.SIGTERM:  # unwound: every temp file was removed
        assert left == [ckpt.name], left
    else:  # SIGKILL: at most hidden temp files, never under the output's name
        assert all(n == ckpt.name or (n.startswith(f".{name}.") and ".tmp" in n)
                   or (n.startswith(".hypernet.json.") and ".tmp" in n) for n in left), left
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] > 0  # a complete file

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint" in proc.stderr
    assert out.exists() and not ckpt.exists()


@pytest.mark.slow
def test_resumed_script_output_equals_uninterrupted(lora_inputs, tmp_path):
    """fit_bank_shard.py killed and rerun writes the same shard as a run never interrupted."""
    from safetensors.torch import load_file

    ref = tmp_path / "ref" / "shard0.safetensors"
    proc = subprocess.run(_lora_cmd(lora_inputs, ref), cwd=ROOT, capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "resumed" / "shard0.safetensors"
    _kill_once_checkpointed(_lora_cmd(lora_inputs, out), out.with_name("shard0.safetensors.ckpt"),
                            signal.SIGKILL, tmp_path / "killed.log")
    proc = subprocess.run(_lora_cmd(lora_inputs, out), cwd=ROOT, capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0 and "resuming from checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert max_abs_diff(load_file(str(out)), load_file(str(ref))) == 0.0


# ------------------------------------------------------------------ through Snakemake

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_snakemake_killed_during_pretraining_resumes(sig, tmp_path):
    """SIGTERM (as scancel / a batch system sends it) or SIGKILL (a dying node) to Snakemake
    and its jobs during pretrain_base: no base model is left, the rerun resumes.

    The signal goes to the process group, as a terminal's Ctrl-C or a batch system does:
    signalled alone, Snakemake's local executor leaves running jobs alone (SIGTERM: it waits
    for them; SIGINT: it exits and they run on).
    """
    override = _write_config(tmp_path / "override.yaml",
                             {"threads_heavy": 1,
                              "base": {"train_steps": 60, "checkpoint_every": 5}})
    results = tmp_path / "results"
    # --nolock: a SIGKILLed Snakemake leaves its lock behind, and --unlock would remove the
    # locks of every other run in this working directory.
    cmd = [sys.executable, "-m", "snakemake", str(results / "base"), "--cores", "2", "--nolock",
           "--configfile", "config/test.yaml", str(override), "--config", f"results_dir={results}"]
    ckpt = results / "base.ckpt" / "state.pt"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    time.sleep(2)  # nothing may go on writing after Snakemake is gone
    assert not (results / "base").exists()
    assert not [p for p in results.iterdir() if p.name.startswith("base") and p.name != "base.ckpt"]

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint" in (results / "logs" / "pretrain_base.log").read_text()
    assert (results / "base" / "unet").is_dir() and not ckpt.parent.exists()
