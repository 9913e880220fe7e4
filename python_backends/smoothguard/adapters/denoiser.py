"""A denoiser for denoised smoothing, loaded from a local checkpoint directory.

Denoised smoothing (Salman et al. 2020) puts a denoiser between the Gaussian copies and the
base model, which then answers a cleaned-up image rather than a noisy one. The server, the
in-process pipeline, the evaluation and the attacks all call this class: pixels in, pixels out,
in [0, 1] pixel units (the server's `noise_unit: pixel`), differentiable w.r.t. the input so
an attack can backpropagate through it.

A checkpoint is `config.json` (its `"denoiser"` field names the kind, plus the architecture,
`"sigma_unit"` and `"sigma_max"`) and `model.safetensors`; safetensors only, never pickle. A
kind in OWN_WEIGHTS (a diffusers DDPM, adapters/denoiser_diffusion.py) reads its own weights
from the folder instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def _build_unet(config: dict[str, Any], folder: Path) -> tuple[torch.nn.Module, int]:
    from smoothguard.adapters.denoiser_unet import UNet, UNetConfig

    arch = UNetConfig.from_dict(
        {**config.get("architecture", {}), "sigma_max": config["sigma_max"]}
    )
    return UNet(arch), arch.multiple


def _build_diffusers(config: dict[str, Any], folder: Path) -> tuple[torch.nn.Module, int]:
    # imported here: diffusers is loaded only for this kind
    from smoothguard.adapters.denoiser_diffusion import build

    return build(config, folder)


# Kind -> ((config.json, its folder) -> (network, the multiple H and W must be)). The network
# maps (noisy [B,3,H,W], sigma [B]) to a clean estimate in [0, 1].
KINDS: dict[str, Callable[[dict[str, Any], Path], tuple[torch.nn.Module, int]]] = {
    "smoothguard-unet": _build_unet,
    "diffusers-ddpm": _build_diffusers,
}
# Kinds whose builder loads its own weights (no model.safetensors beside config.json).
OWN_WEIGHTS = frozenset({"diffusers-ddpm"})


class Denoiser:
    """noisy pixels [B,3,H,W] (any range) and sigma (pixel units) -> clean estimate in [0, 1]."""

    def __init__(
        self, network: torch.nn.Module, config: dict[str, Any], multiple: int, device: str = "cpu"
    ) -> None:
        self.network = network.to(device).eval()
        self.network.requires_grad_(False)
        self.config = config
        self.multiple = multiple
        self.device = device
        self.kind: str = config["denoiser"]
        self.sigma_max = float(config["sigma_max"])
        self.image_size = config.get("image_size")

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> Denoiser:
        """From a local directory only; a missing file or an unknown kind is a ValueError."""
        from safetensors.torch import load_file

        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"denoiser checkpoint {str(folder)!r} is not a directory")
        if not (folder / CONFIG).is_file():
            raise ValueError(f"denoiser checkpoint {str(folder)!r} lacks {CONFIG}")
        try:
            config = json.loads((folder / CONFIG).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{folder / CONFIG} is not valid JSON: {err}") from err
        kind = config.get("denoiser") if isinstance(config, dict) else None
        if kind not in KINDS:
            raise ValueError(
                f"{folder / CONFIG}: unknown denoiser kind {kind!r} (known: {sorted(KINDS)})"
            )
        unit = config.get("sigma_unit", "pixel")
        if unit != "pixel":
            raise ValueError(f"{folder / CONFIG}: sigma_unit must be 'pixel', got {unit!r}")
        if "sigma_max" not in config:
            raise ValueError(f"{folder / CONFIG} lacks sigma_max")
        if kind in OWN_WEIGHTS:
            network, multiple = KINDS[kind](config, folder)
            return cls(network, config, multiple, device)
        if not (folder / WEIGHTS).is_file():
            raise ValueError(f"denoiser checkpoint {str(folder)!r} lacks {WEIGHTS}")
        network, multiple = KINDS[kind](config, folder)
        state = load_file(str(folder / WEIGHTS))
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{folder / WEIGHTS} does not match {folder / CONFIG}: {err}") from err
        return cls(network, config, multiple, device)

    def __call__(self, pixels: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """[B,3,H,W] noisy pixels, sigma a float or one per row (0 allowed) -> [B,3,H,W] in
        [0, 1]. Any H and W: the input is reflect-padded to the network's multiple and the
        result cropped back. No no_grad here, so gradients reach `pixels`."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, H, W], got {list(pixels.shape)}")
        batch, _, height, width = pixels.shape
        x = pixels.to(self.device, torch.float32)
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if s.ndim == 0:
            s = s.expand(batch)
        if s.shape != (batch,):
            raise ValueError(f"sigma must be a float or [{batch}], got {list(s.shape)}")
        if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
            raise ValueError("sigma must be finite and non-negative")
        pad_h = -height % self.multiple
        pad_w = -width % self.multiple
        if pad_h or pad_w:
            # reflect needs the pad below the size; replicate works for any size
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.network(x, s)
        return out[:, :, :height, :width]

    def __repr__(self) -> str:
        return f"Denoiser(kind={self.kind!r}, sigma_max={self.sigma_max}, device={self.device!r})"
