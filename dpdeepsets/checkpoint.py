"""Periodic training checkpoints that a killed stage resumes from.

A :class:`Checkpointer` owns one work directory (by default ``<output>.ckpt/`` beside the
stage's output). The training loops of :mod:`dpdeepsets.diffusion`, :mod:`dpdeepsets.lora`
and :mod:`dpdeepsets.hypernet` call :meth:`Checkpointer.step_done` after every step; every
``every`` steps it writes ``state.pt`` atomically: model, optimizer, EMA and LR-schedule
states, the loop's own random generators, the global torch / numpy / python RNG states
and the step. Restoring all of it makes the resumed run compute the same numbers as an
uninterrupted one (bit for bit on the same machine and thread count).

Each checkpoint carries a key: a hash of everything the loop's result depends on (its
hyperparameters and digests of its data and initial weights). A checkpoint with another
key is ignored with a log line, so changed settings or inputs never resume stale state.
Once the stage's final artifact is written the caller removes the directory
(:meth:`Checkpointer.clear`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1


def tensor_digest(*tensors) -> str:
    """SHA-256 of tensors / arrays (dtype, shape and bytes), for checkpoint keys."""
    h = hashlib.sha256()
    for t in tensors:
        if isinstance(t, torch.Tensor):
            a = t.detach().cpu().contiguous().numpy()
        else:
            a = np.ascontiguousarray(t)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


def config_settings(config) -> dict:
    """A diffusers config as key material: its private entries (``_use_default_values``
    is a list built from a set, so its order changes from process to process) left out."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **settings}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def global_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores one training loop's state in ``directory`` every ``every`` steps.

    ``every = 0`` disables saving (a stale checkpoint is still never resumed).
    """

    def __init__(self, directory: str | Path, every: int):
        self.directory = Path(directory)
        self.every = int(every)
        self.key: str | None = None
        self.what = "training"

    @classmethod
    def for_output(cls, output: str | Path, every: int, directory: str | Path | None = None):
        """The default work directory of a stage: ``<output>.ckpt/`` beside its output."""
        output = Path(output)
        return cls(directory or output.with_name(output.name + ".ckpt"), every)

    @property
    def path(self) -> Path:
        return self.directory / "state.pt"

    def bind(self, what: str, settings: dict) -> None:
        """Key the checkpoint to ``settings`` (hyperparameters and data/weight digests)."""
        self.what = what
        self.key = settings_key({"what": what, **settings})

    def load(self) -> dict | None:
        """The saved state (with ``step``, the completed steps) if one exists for the bound
        key, else ``None`` (logged). Loading also restores the global RNG states."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # unreadable: treat as absent, never trust it
            log.warning("ignoring unreadable checkpoint %s (%s); starting from step 0",
                        self.path, exc)
            return None
        if payload.get("key") != self.key:
            log.warning("ignoring checkpoint %s: it was written with different settings or "
                        "inputs (key %s..., expected %s...); starting from step 0",
                        self.path, str(payload.get("key"))[:12], str(self.key)[:12])
            return None
        set_global_rng_state(payload["global_rng"])
        log.info("%s: resuming from checkpoint %s at step %d", self.what, self.path,
                 payload["step"])
        return {**payload["state"], "step": payload["step"]}

    def step_done(self, step: int, total: int, state_fn) -> None:
        """Called after step ``step`` (0-based) of ``total``; saves ``state_fn()`` when due.

        The last step is not checkpointed: the caller writes the final artifact next.
        """
        done = step + 1
        if self.every > 0 and done % self.every == 0 and done < total:
            self.save(done, state_fn())

    def save(self, step: int, state: dict) -> None:
        """Write the state after ``step`` completed steps (atomically)."""
        payload = {"key": self.key, "step": step, "global_rng": global_rng_state(), "state": state}
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        log.info("%s: checkpoint at step %d -> %s", self.what, step, self.path)

    def clear(self) -> None:
        """Remove the work directory (after the final artifact is in place)."""
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
            log.info("removed checkpoint directory %s", self.directory)
