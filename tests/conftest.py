import pytest
import torch


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
