"""The model's own image preprocessing, without loading the model.

The noise step must add noise at the model's input resolution and in its normalised space,
so it needs exactly the resize/crop/normalise of the checkpoint's image processor; loading
only that keeps the noise step light (no weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothguard.adapters.table_preprocess import TableImageProcessor


@dataclass
class ImagePreprocessor:
    # transformers' image processor, or the same arithmetic without it (TableImageProcessor)
    processor: object
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def load(
        cls, model_path: str | os.PathLike[str], image_size: int | None = None
    ) -> ImagePreprocessor:
        """`image_size` (mllm.image_size) is the square resolution for processors that have
        none of their own (patch_sequence); for the others it may only restate theirs.
        A plain CLIP processor runs as TableImageProcessor (equal tensors, no torch import)."""
        table = TableImageProcessor.from_config(model_path)
        if table is not None:
            check_image_size(model_path, table.image_size, image_size)
            return cls(table, table.image_size, table.mean, table.std)
        from transformers import AutoImageProcessor

        from smoothguard.adapters.patch_sequence import (
            PatchGrid,
            ResizedImageProcessor,
            is_patch_sequence,
        )

        processor = AutoImageProcessor.from_pretrained(str(model_path), backend="pil")
        if is_patch_sequence(processor):
            if not image_size:
                raise ValueError(
                    f"{model_path}: the image processor has no fixed resolution; set "
                    f"mllm.image_size (a multiple of {PatchGrid.of(processor).unit})"
                )
            PatchGrid.of(processor).check(image_size)
            processor = ResizedImageProcessor.like(processor, image_size)
        probe = processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="np")
        values = probe["pixel_values"]
        if values.ndim != 4:
            raise ValueError(
                f"{model_path}: image processor gives pixel_values of rank {values.ndim}; only "
                "fixed-resolution processors ([B,3,H,W]) and the Qwen2-VL family are supported"
            )
        size = (int(values.shape[2]), int(values.shape[3]))
        check_image_size(model_path, size, image_size)
        mean = tuple(float(m) for m in np.broadcast_to(processor.image_mean, (3,)))
        std = tuple(float(s) for s in np.broadcast_to(processor.image_std, (3,)))
        return cls(processor, size, mean, std)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HxWx3 images -> float32 [B,3,H,W] normalised as the model expects.

        The layout is stated (channels last), never inferred: left to guess, the processor
        reads a 1xWx3 or 3xWx3 image as channels-first."""
        if isinstance(self.processor, TableImageProcessor):
            return self.processor(images)
        out = self.processor(
            images=list(images), return_tensors="np", input_data_format="channels_last"
        )["pixel_values"]
        return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class ImageInputSpec:
    """What a model's pixel values look like, read from its processor config alone."""

    image_size: tuple[int, int] | None  # None: the processor has no fixed resolution
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def check_image_size(
    model_path: str | os.PathLike[str], size: tuple[int, int], image_size: int | None
) -> None:
    """A configured mllm.image_size that is not the checkpoint's own fixed resolution is a
    mistake (the noise would be drawn at one size and the model fed another): refuse it."""
    if image_size and size != (image_size, image_size):
        raise ValueError(
            f"{model_path}: mllm.image_size {image_size} differs from the checkpoint's fixed "
            f"input resolution {size[0]}x{size[1]}; leave it 0 for this checkpoint"
        )


def image_processor_config(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The image processor's settings from the checkpoint's JSON (the first file holding
    image_mean), or None."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(model_path) / name
        if path.is_file():
            data = json.loads(path.read_text())
            config = data.get("image_processor", data)
            if "image_mean" in config:
                return config
    return None


def read_image_input_spec(
    model_path: str | os.PathLike[str], image_size: int | None = None
) -> ImageInputSpec:
    """The checkpoint's input resolution and normalisation from its processor config JSON.

    For steps that must check pixel values a caller sends (generate) without loading the
    processor: importing transformers costs seconds and ~100 MB in each of many instances.
    The resolution is the center crop where the processor crops, else a fixed height x width
    resize; anything else (shortest-edge resize without a crop, dynamic resolution) is
    `image_size` (mllm.image_size) where one is configured, else None.
    tests/smoothguard/adapters/test_preprocess.py checks it against ImagePreprocessor.load.
    """
    config = image_processor_config(model_path)
    if config is None:
        raise ValueError(f"{model_path}: no image processor config with image_mean/image_std")
    size = None
    if config.get("do_center_crop") and config.get("crop_size") is not None:
        size = _height_width(config["crop_size"])
    elif config.get("do_resize", True) and config.get("size") is not None:
        size = _height_width(config["size"])
    if size is None and image_size:
        size = (image_size, image_size)
    elif size is not None:
        check_image_size(model_path, size, image_size)
    mean = np.broadcast_to(np.asarray(config["image_mean"], np.float64), (3,))
    std = np.broadcast_to(np.asarray(config["image_std"], np.float64), (3,))
    return ImageInputSpec(
        size,
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
    )


def _height_width(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    return None
