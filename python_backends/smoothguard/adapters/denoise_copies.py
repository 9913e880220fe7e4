"""Denoised smoothing's step: noisy copies in the model's normalised space, through a pixel-space
denoiser (adapters/denoiser.py), back to the normalised space the model takes.

The server's `denoise` step, the in-process pipeline and the attacks (EOT through every random
and learned step) all go through this one class, so what is attacked is what is served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from smoothguard.adapters.denoiser import Denoiser


class CopyDenoiser:
    """Normalised [K, 3, H, W] copies -> denoised, same space and shape."""

    def __init__(
        self,
        denoiser: Denoiser,
        mean: Sequence[float],
        std: Sequence[float],
        batch: int = 64,
    ) -> None:
        self.denoiser = denoiser
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, 3, 1, 1)
        self.batch = batch

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mean: Sequence[float],
        std: Sequence[float],
        device: str = "cpu",
    ) -> CopyDenoiser:
        return cls(Denoiser.load(path, device=device), mean, std)

    def normalised(self, values: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Differentiable: attacks backpropagate through it (EOT through the denoiser)."""
        mean, std = self.mean.to(values.device), self.std.to(values.device)
        clean = self.denoiser(values * std + mean, sigma)
        return (clean - mean) / std

    def __call__(self, copies: np.ndarray, sigma: float) -> np.ndarray:
        """The serving path: no gradients, `batch` copies at a time."""
        out = np.empty_like(copies, dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, len(copies), self.batch):
                part = torch.from_numpy(np.ascontiguousarray(copies[lo : lo + self.batch]))
                out[lo : lo + self.batch] = self.normalised(part.float(), sigma).cpu().numpy()
        return out
