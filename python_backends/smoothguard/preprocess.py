"""The model's own image preprocessing, without loading the model.

The noise step must add noise at the model's input resolution and in its normalised space,
so it needs exactly the resize/crop/normalise of the checkpoint's image processor; loading
only that keeps the noise step light (no weights).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ImagePreprocessor:
    processor: object
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def load(cls, model_path: str | os.PathLike[str]) -> ImagePreprocessor:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(str(model_path), backend="pil")
        probe = processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="np")
        values = probe["pixel_values"]
        if values.ndim != 4:
            raise ValueError(
                f"{model_path}: image processor gives pixel_values of rank {values.ndim}; only "
                "fixed-resolution processors ([B,3,H,W]) are supported"
            )
        mean = tuple(float(m) for m in np.broadcast_to(processor.image_mean, (3,)))
        std = tuple(float(s) for s in np.broadcast_to(processor.image_std, (3,)))
        return cls(processor, (int(values.shape[2]), int(values.shape[3])), mean, std)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HxWx3 images -> float32 [B,3,H,W] normalised as the model expects."""
        out = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(out, dtype=np.float32)
