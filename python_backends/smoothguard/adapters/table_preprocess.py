"""CLIP-style image preprocessing in PIL and one table lookup, without transformers.

The processor most LLaVA-style checkpoints ship (CLIPImageProcessor: resize, optional centre
crop, rescale by 1/255, normalise per channel) maps every uint8 value of a channel to one
float32, so after PIL's resize the rest of the work is a [3, 256] table lookup. The table holds
exactly what transformers computes (float64 rescale cast to float32, then float32 subtract and
divide), so the tensors are equal bit for bit (tests/smoothguard/adapters/test_table_preprocess
.py holds them equal to the HF processor on random images of many shapes).

Why: the noise step runs this on every request, and the HF path imports torch (about 360 MiB
RSS per stub against about 40) and costs 0.25-0.7 ms per image where this costs a fraction.
Anything this does not cover exactly (other processor types, padding, dynamic resolution, a
setting left to a class default) makes `from_config` return None, and the caller keeps the HF
processor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# The processor types whose preprocessing is exactly resize -> centre crop -> rescale ->
# normalise (transformers' PIL backend; "Fast" names the torchvision one, same arithmetic
# where it is the PIL path that runs: ImagePreprocessor.load asks for backend="pil").
PLAIN_TYPES = frozenset({"CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil"})
# Keys whose value decides the result; each must be stated (no class default is guessed).
REQUIRED = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
# Keys that may be present and change nothing for an RGB uint8 image.
HARMLESS = frozenset(
    {
        "do_convert_rgb",  # identity on 3-channel arrays
        "crop_size",  # read only with do_center_crop
        "image_processor_type",
        "processor_class",
        "feature_extractor_type",
    }
)


@dataclass(frozen=True)
class TableImageProcessor:
    """uint8 HxWx3 images -> float32 [B, 3, H, W], as the checkpoint's CLIPImageProcessor."""

    resize: tuple[int, int] | int  # (height, width), or the shortest edge's length
    crop: tuple[int, int] | None
    resample: int
    table: np.ndarray  # [3, 256] float32: channel c's value for uint8 v
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, int):
            raise ValueError("a shortest-edge resize without a crop has no fixed size")
        return self.resize

    @classmethod
    def from_config(cls, model_path: str | os.PathLike[str]) -> TableImageProcessor | None:
        """The checkpoint's processor if it is a plain CLIP one stated in full, else None."""
        from smoothguard.adapters.preprocess import image_processor_config  # (imports this)

        config = image_processor_config(model_path)
        if config is None or config.get("image_processor_type") not in PLAIN_TYPES:
            return None
        if any(key not in config for key in REQUIRED):
            return None
        if any(key not in HARMLESS and key not in REQUIRED for key in config):
            return None
        resize = _resize(config) if config["do_resize"] else None
        crop = _pair(config.get("crop_size")) if config["do_center_crop"] else None
        if resize is None or (config["do_center_crop"] and crop is None):
            return None
        if isinstance(resize, int) and (crop is None or max(crop) > resize):
            return None  # a crop larger than the short side pads: left to transformers
        mean = _three(config["image_mean"]) if config["do_normalize"] else None
        std = _three(config["image_std"]) if config["do_normalize"] else None
        if mean is None or std is None:
            return None
        scale = float(config["rescale_factor"]) if config["do_rescale"] else None
        return cls(resize, crop, int(config["resample"]), _table(scale, mean, std), mean, std)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.one(image) for image in images])

    def one(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
        height, width = self._resized_size(image.shape[0], image.shape[1])
        resized = np.asarray(Image.fromarray(image).resize((width, height), self.resample))
        if self.crop is not None:
            top = (height - self.crop[0]) // 2
            left = (width - self.crop[1]) // 2
            resized = resized[top : top + self.crop[0], left : left + self.crop[1]]
        # One gather from the flattened table (channel c's entries start at 256 c): of the
        # lookups tried at 336 px this was the fastest (0.9 ms; fancy [c, v] indexing 2.7 ms).
        index = resized.transpose(2, 0, 1).astype(np.intp)
        index += _OFFSETS
        return self.table.reshape(-1)[index]

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' get_resize_output_image_size for a shortest-edge resize."""
        if not isinstance(self.resize, int):
            return self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if width <= height else (self.resize, new_long)


_OFFSETS = (256 * np.arange(3, dtype=np.intp))[:, None, None]


def _table(scale: float | None, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """transformers' rescale (float64 multiply, cast to float32) then normalise (float32)."""
    values = np.arange(256, dtype=np.uint8)
    x = (
        (values.astype(np.float64) * scale).astype(np.float32)
        if scale
        else values.astype(np.float32)
    )
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray((x[None, :] - m) / s, dtype=np.float32)


def _resize(config: dict[str, Any]) -> tuple[int, int] | int | None:
    size = config["size"]
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        return int(size["shortest_edge"])
    return _pair(size)


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return (int(value["height"]), int(value["width"]))
    return None


def _three(value: Any) -> tuple[float, float, float] | None:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, 3)
    if array.size != 3:
        return None
    return (float(array[0]), float(array[1]), float(array[2]))
