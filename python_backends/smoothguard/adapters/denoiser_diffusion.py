"""An off-the-shelf diffusers DDPM as a one-shot denoiser (Carlini et al. 2023, "(Certified!!)
Adversarial Robustness for Free!").

A DDPM's network was trained to take the noise out of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps for every t, so a Gaussian-noised image is already one of its inputs: in the model's
[-1, 1] range a pixel-unit sigma s is 2s, the timestep whose sqrt((1 - abar_t) / abar_t) is
nearest 2s has that noise-to-signal ratio, and scaling the noisy image by sqrt(abar_t) makes it
x_t. One network call then gives the clean estimate; no sampling loop, no training here, and
the whole step stays in torch so attacks backpropagate through it.

The checkpoint folder holds our `config.json` (`"denoiser": "diffusers-ddpm"`) beside the
diffusers files: a `UNet2DModel` (its `config.json` and `diffusion_pytorch_model.safetensors`,
in the subfolder named by `"unet"`, default "unet") and its noise schedule (a diffusers
`scheduler_config.json` in the subfolder named by `"scheduler"`, default "scheduler"). A hub
snapshot with everything at its top (google/ddpm-cifar10-32) goes in one subfolder named by
both. Local files only, safetensors only: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any

import torch
from torch import nn

KIND = "diffusers-ddpm"
UNET_CONFIG = "config.json"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# Schedulers whose config describes the discrete beta schedule a DDPM was trained with.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


class OneShotDDPM(nn.Module):
    """noisy [B,3,H,W] pixels (the defense's noisy copy), sigma [B] pixel units -> clean
    estimate in [0, 1]. H and W must be multiples of 2 ** (down blocks - 1)."""

    def __init__(
        self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
        self.unet = unet
        self.prediction_type = prediction_type
        abar = alphas_cumprod.to(torch.float32)
        self.register_buffer("alphas_cumprod", abar)
        # noise-to-signal ratio of x_t, in the model's [-1, 1] units
        self.register_buffer("ratios", ((1 - abar) / abar).sqrt())

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """[B] pixel-unit sigmas -> [B] timesteps: argmin_t |sqrt((1-abar_t)/abar_t) - 2 sigma|."""
        target = 2 * sigma.to(self.ratios.device, torch.float32)
        return (self.ratios[None, :] - target[:, None]).abs().argmin(dim=1)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.timesteps(sigma)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        x_t = a * (2 * noisy - 1)
        out = self.unet(x_t, t).sample
        if self.prediction_type == "epsilon":
            x0 = (x_t - b * out) / a
        elif self.prediction_type == "sample":
            x0 = out
        else:  # v_prediction: v = a eps - b x0
            x0 = a * x_t - b * out
        clean = ((x0 + 1) / 2).clamp(0.0, 1.0)
        # sigma 0: nothing to take away (the network ran on them too, for one batched call)
        return torch.where(sigma.view(-1, 1, 1, 1) > 0, clean, noisy.clamp(0.0, 1.0))


def _subfolder(folder: Path, config: dict[str, Any], key: str, needs: tuple[str, ...]) -> Path:
    name = config.get(key, key)
    where = f"{folder / 'config.json'}: {key!r}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} must name a subfolder, got {name!r}")
    if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise ValueError(f"{where} must be a subfolder of {str(folder)!r}, got {name!r}")
    sub = folder / name
    if not sub.is_dir():
        raise ValueError(
            f"{where}: {str(sub)!r} is not a local folder (local files only, never a hub id)"
        )
    missing = [n for n in needs if not (sub / n).is_file()]
    if missing:
        extra = " (safetensors only)" if UNET_WEIGHTS in missing else ""
        raise ValueError(f"{str(sub)!r} lacks {', '.join(missing)}{extra}")
    return sub


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _check_unet_config(path: Path, unet: dict[str, Any]) -> int:
    """What the one-shot step needs of the UNet; returns the multiple H and W must be."""
    if unet.get("_class_name") != "UNet2DModel":
        raise ValueError(
            f"{path}: _class_name must be 'UNet2DModel', got {unet.get('_class_name')!r}"
        )
    for key in ("in_channels", "out_channels"):
        if unet.get(key, 3) != 3:
            raise ValueError(f"{path}: {key} must be 3 (RGB noise prediction), got {unet[key]!r}")
    if unet.get("time_embedding_type", "positional") not in ("positional", "learned"):
        raise ValueError(
            f"{path}: time_embedding_type {unet['time_embedding_type']!r} is not a DDPM's"
            " discrete timestep (only 'positional' or 'learned')"
        )
    if unet.get("num_class_embeds") is not None or unet.get("class_embed_type") is not None:
        raise ValueError(f"{path}: class-conditional UNets are not supported")
    if unet.get("center_input_sample", False):
        raise ValueError(f"{path}: center_input_sample must be false (x_t is already in [-1, 1])")
    blocks = unet.get("down_block_types")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"{path}: down_block_types must be a non-empty list")
    # every down block but the last halves H and W
    return 2 ** (len(blocks) - 1)


def build(config: dict[str, Any], folder: Path) -> tuple[nn.Module, int]:
    """Our config.json and its folder -> (OneShotDDPM with the UNet's weights loaded, multiple)."""
    folder = Path(folder)
    unet_dir = _subfolder(folder, config, "unet", (UNET_CONFIG, UNET_WEIGHTS))
    sched_dir = _subfolder(folder, config, "scheduler", (SCHEDULER_CONFIG,))
    unet_config = _read_json(unet_dir / UNET_CONFIG)
    multiple = _check_unet_config(unet_dir / UNET_CONFIG, unet_config)
    sched_path = sched_dir / SCHEDULER_CONFIG
    sched_config = _read_json(sched_path)
    if sched_config.get("_class_name") not in SCHEDULERS:
        raise ValueError(
            f"{sched_path}: _class_name must be one of {SCHEDULERS} (a discrete beta schedule),"
            f" got {sched_config.get('_class_name')!r}"
        )
    prediction_type = sched_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"{sched_path}: prediction_type {prediction_type!r} is not supported"
            f" (one of {PREDICTION_TYPES})"
        )

    from diffusers import DDPMScheduler, UNet2DModel

    try:
        scheduler = DDPMScheduler.from_config(sched_config)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise ValueError(f"{sched_path}: not a usable noise schedule: {err}") from err
    try:
        unet = UNet2DModel.from_pretrained(
            str(unet_dir),
            use_safetensors=True,
            local_files_only=True,
            torch_dtype=torch.float32,
            low_cpu_mem_usage=False,
        )
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        raise ValueError(f"{unet_dir} is not a loadable UNet2DModel checkpoint: {err}") from err
    return OneShotDDPM(unet, scheduler.alphas_cumprod, prediction_type), multiple
