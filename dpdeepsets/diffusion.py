"""The base diffusion model: a diffusers ``UNet2DModel`` DDPM, its training loss and DDIM sampling.

The base model is trained on public data only (or loaded from a local pretrained
diffusers directory). It is saved as a standard ``DDPMPipeline`` directory
(``unet/`` + ``scheduler/`` + ``model_index.json``) so other tools load it with
``DDPMPipeline.from_pretrained``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from .checkpoint import Checkpointer, config_settings, module_digest, tensor_digest
from .io import atomic_dir

log = logging.getLogger(__name__)


def build_unet(*, image_size: int, channels: int, block_out_channels, layers_per_block: int,
               attention_levels, norm_num_groups: int, attention_head_dim: int) -> UNet2DModel:
    """A small DDPM UNet; ``attention_levels`` lists the resolution levels with self-attention."""
    levels = range(len(block_out_channels))
    down = ["AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels]
    up = ["AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels)]
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim,
    )


def base_from_config(base: dict, *, image_size: int, channels: int):
    """(a freshly initialised UNet, its DDPM scheduler) of the ``base`` config section's
    architecture: what pretrain_base trains, and what the benchmarks time (the cost does not
    depend on the weights). Seed torch first for reproducible weights."""
    unet = build_unet(image_size=image_size, channels=channels,
                      block_out_channels=base["block_out_channels"], layers_per_block=base["layers_per_block"],
                      attention_levels=base["attention_levels"], norm_num_groups=base["norm_num_groups"],
                      attention_head_dim=base["attention_head_dim"])
    return unet, build_scheduler(base["num_train_timesteps"], base["beta_schedule"])


def build_scheduler(num_train_timesteps: int, beta_schedule: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type="epsilon", clip_sample=True)


def denoising_loss(unet, scheduler: DDPMScheduler, x0: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Epsilon-prediction MSE of DDPM. ``reduction='none'`` gives one loss per example."""
    xt = scheduler.add_noise(x0, noise, timesteps)
    pred = unet(xt, timesteps).sample
    per_example = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
    return per_example.mean() if reduction == "mean" else per_example


def draw_noise(x0: torch.Tensor, num_train_timesteps: int, generator: torch.Generator):
    """Timesteps (uniform) and Gaussian noise for a batch, from an explicit CPU generator."""
    t = torch.randint(0, num_train_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return t.to(x0.device), noise.to(x0.device)


def train_base(unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, *, steps: int,
               batch_size: int, lr: float, ema_decay: float, seed: int,
               warmup_steps: int = 100, device: torch.device | str = "cpu",
               checkpoint: Checkpointer | None = None) -> UNet2DModel:
    """Train the UNet on public images (float NCHW in [-1,1]); returns the EMA weights.

    With ``checkpoint``, the full loop state is saved every ``checkpoint.every`` steps and a
    matching saved state is resumed from (same result as an uninterrupted run); the caller
    clears it once the model is saved.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet.to(device)
    images = images.to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup_steps)
        * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1)
    start, running = 0, None
    if checkpoint is not None:
        checkpoint.bind("pretrain_base", {
            "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
            "seed": seed, "warmup_steps": warmup_steps,
            "scheduler": config_settings(scheduler.config),
            "images": tensor_digest(images), "init": module_digest(unet)})
        state = checkpoint.load()
        if state is not None:
            unet.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["lr_schedule"])
            gen.set_state(state["generator"])
            start, running = state["step"], state["running"]

    def loop_state():
        return {"model": unet.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "lr_schedule": sched.state_dict(), "generator": gen.get_state(), "running": running}

    unet.train()
    n = images.shape[0]
    bar = tqdm(range(start, steps), desc="pretrain_base", mininterval=5, initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x0 = images[idx.to(images.device)]
        t, noise = draw_noise(x0.cpu(), scheduler.config.num_train_timesteps, gen)
        t, noise = t.to(images.device), noise.to(images.device)
        loss = denoising_loss(unet, scheduler, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{running:.4f}")
            log.info("step %d/%d loss(ema) %.4f", step + 1, steps, running)
        if checkpoint is not None:
            checkpoint.step_done(step, steps, loop_state)
    return ema.cpu()


def save_base(path: str | Path, unet: UNet2DModel, scheduler: DDPMScheduler) -> None:
    """Save as a diffusers ``DDPMPipeline`` directory, atomically."""
    with atomic_dir(path) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)


def load_base(path: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load a base model directory (pipeline layout with ``unet/``, or a bare UNet directory)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"base model directory not found: {path} (set base.pretrained_dir "
                                f"to a local diffusers UNet2DModel directory, or leave it null to "
                                f"pretrain one on public data)")
    unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
    if not (unet_dir / "config.json").exists():
        raise FileNotFoundError(f"no diffusers UNet config.json in {path} or {path / 'unet'}")
    unet = UNet2DModel.from_pretrained(unet_dir)
    sched_dir = path / "scheduler"
    if (sched_dir / "scheduler_config.json").exists():
        scheduler = DDPMScheduler.from_pretrained(sched_dir)
    else:
        scheduler = DDPMScheduler(num_train_timesteps=1000)
    unet.eval().requires_grad_(False)
    return unet, scheduler


@torch.no_grad()
def ddim_sample(unet: UNet2DModel, scheduler: DDPMScheduler, *, num_samples: int, steps: int,
                seed: int, batch_size: int = 128, eta: float = 0.0, groups: int = 1,
                desc: str = "sample", device: torch.device | str = "cpu") -> torch.Tensor:
    """DDIM samples (float NCHW in [-1,1]); the initial noise depends only on ``seed``.

    Using the same seed for every method gives common random numbers: differences between
    methods are not blurred by different starting noise. ``groups`` = S samples S models at
    once (a UNet whose :class:`~dpdeepsets.lora.GroupedLoRALayer` s hold S LoRAs): every
    group starts from the same noise (and, with eta > 0, gets the same step noise), the
    batch is group-major, and the result is ``[S * num_samples, ...]``, group after group.
    With eta > 0 each sample draws its step noise from a generator of its own, so the
    samples do not depend on ``batch_size``.
    """
    from .seeds import derive_seed

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    cfg = unet.config
    gen = torch.Generator().manual_seed(seed)
    shape = (num_samples, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x_all = torch.randn(shape, generator=gen)
    step_gens = ([torch.Generator().manual_seed(derive_seed(seed, "ddim_eta", i)) for i in range(num_samples)]
                 if eta > 0 else None)
    out = []
    bar = tqdm(total=groups * num_samples * steps, desc=desc, unit="img-step", mininterval=5)
    for start in range(0, num_samples, batch_size):
        x0 = x_all[start:start + batch_size]
        b = x0.shape[0]
        x = x0.repeat(groups, 1, 1, 1).to(device)
        for t in ddim.timesteps:
            eps = unet(x, t).sample
            step_noise = None
            if eta > 0:  # drawn on CPU generators so samples do not depend on the device
                step_noise = torch.stack([torch.randn(shape[1:], generator=g)
                                          for g in step_gens[start:start + b]])
                step_noise = step_noise.repeat(groups, 1, 1, 1).to(device)
            x = ddim.step(eps, t, x, eta=eta, variance_noise=step_noise).prev_sample
            bar.update(x.shape[0])
        out.append(x.clamp(-1, 1).cpu().view(groups, b, *shape[1:]))
    bar.close()
    return torch.cat(out, dim=1).reshape(groups * num_samples, *shape[1:])


def images_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW tensor in [-1,1] (:func:`dpdeepsets.data.to_model_range`)."""
    from .data import to_model_range

    return torch.from_numpy(to_model_range(images_uint8))


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW tensor in [-1,1] -> uint8 NHWC (:func:`dpdeepsets.data.from_model_range`)."""
    from .data import from_model_range

    return from_model_range(x.detach().cpu().float().numpy())
