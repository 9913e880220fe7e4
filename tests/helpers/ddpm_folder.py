"""A tiny random diffusers DDPM folder in the layout the `diffusers-ddpm` denoiser kind reads
(our config.json + unet/ + scheduler/), shared by the adapter's tests and the served test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")  # 3 down blocks: multiple 4
BETAS = (1e-4, 0.02, 1000)  # the linear DDPM schedule (start, end, steps)


def unet_model(**overrides: Any) -> UNet2DModel:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {
        "sample_size": 16,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16, 16),
        "down_block_types": BLOCKS,
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "attention_head_dim": 8,
    }
    return UNet2DModel(**(kwargs | overrides))


def make_folder(
    root: Path,
    *,
    unet: UNet2DModel | None = None,
    prediction_type: str = "epsilon",
    ours: dict[str, Any] | None = None,
    zero_out: bool = False,
) -> Path:
    """Our config.json + unet/ (save_pretrained, safetensors) + scheduler/ (a DDPMScheduler)."""
    unet = unet if unet is not None else unet_model()
    if zero_out:
        with torch.no_grad():
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.zero_()
    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    start, end, steps = BETAS
    DDPMScheduler(
        num_train_timesteps=steps,
        beta_start=start,
        beta_end=end,
        beta_schedule="linear",
        prediction_type=prediction_type,
    ).save_pretrained(root / "scheduler")
    config = {"denoiser": "diffusers-ddpm", "sigma_unit": "pixel", "sigma_max": 0.5}
    (root / "config.json").write_text(json.dumps(config | (ours or {})))
    return root
