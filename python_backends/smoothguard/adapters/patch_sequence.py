"""Dynamic-resolution checkpoints (the Qwen2-VL / Qwen2.5-VL family) at one fixed resolution.

Their processors resize each image to its own multiple of 28 px and hand the model a flat
sequence of patches plus `image_grid_thw`, so neither SmoothGuard's per-pixel noise nor an
attack has a [B, 3, H, W] image to work on. Here every image is resized to one configured
square size (`mllm.image_size`) and normalised as the processor would; the patch sequence is
cut only at the model's door, in torch, so noise is added before the patching (as the method
says) and gradients reach the pixels. Only images are served: the family's video processor,
which needs torchvision, is never loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only where pixels go to the model: the noise step never imports it
    import torch

_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the family's default


def is_patch_sequence(image_processor: Any) -> bool:
    """Whether a processor emits a patch sequence with a grid rather than [B, 3, H, W]."""
    probe = image_processor(images=[np.zeros((56, 56, 3), np.uint8)], return_tensors="np")
    return "image_grid_thw" in probe and np.asarray(probe["pixel_values"]).ndim == 2


@dataclass(frozen=True)
class PatchGrid:
    """How the family cuts a [3, H, W] image into `(H/p) * (W/p)` rows of C x t x p x p values,
    grouped by merge_size x merge_size blocks (the merger turns each block into one token)."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @classmethod
    def of(cls, image_processor: Any) -> PatchGrid:
        return cls(
            int(image_processor.patch_size),
            int(image_processor.merge_size),
            int(image_processor.temporal_patch_size),
        )

    @property
    def unit(self) -> int:
        """Side lengths must be multiples of this (28 for the real family)."""
        return self.patch_size * self.merge_size

    def check(self, size: int) -> None:
        if size <= 0 or size % self.unit:
            raise ValueError(
                f"mllm.image_size must be a positive multiple of {self.unit} for this "
                f"dynamic-resolution checkpoint (patch {self.patch_size} x merge "
                f"{self.merge_size}), got {size}"
            )

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        return (1, height // self.patch_size, width // self.patch_size)

    def tokens(self, height: int, width: int) -> int:
        """Image placeholder tokens in the prompt: one per merged block."""
        _, h, w = self.grid_thw(height, width)
        return h * w // self.merge_size**2

    def patchify(self, values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B * (H/p) * (W/p), 3 * t * p * p] in the processor's row order; a
        still image is repeated over the temporal patch, as the processor does."""
        b, c, h, w = values.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = values.reshape(b, c, gh // m, m, p, gw // m, m, p)
        # (b, gh/m, gw/m, mh, mw, c, ph, pw), then the temporal copies beside c
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
        x = x.expand(b, gh // m, gw // m, m, m, c, t, p, p)
        return x.reshape(b * gh * gw, c * t * p * p)


@dataclass(frozen=True)
class ResizedImageProcessor:
    """Resize to one size with the processor's resampling, rescale and normalise with its
    constants: the processor's own steps at a resolution it would also have chosen."""

    size: tuple[int, int]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: int = _BICUBIC

    @classmethod
    def like(cls, image_processor: Any, size: int) -> ResizedImageProcessor:
        mean = np.broadcast_to(np.asarray(image_processor.image_mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(image_processor.image_std, np.float64), (3,))
        resample = getattr(image_processor, "resample", None)
        return cls(
            (size, size),
            (float(mean[0]), float(mean[1]), float(mean[2])),
            (float(std[0]), float(std[1]), float(std[2])),
            float(getattr(image_processor, "rescale_factor", 1 / 255)),
            _BICUBIC if resample is None else int(resample),
        )

    def __call__(
        self, images: Sequence[np.ndarray], return_tensors: str = "np", **_: Any
    ) -> dict[str, np.ndarray]:
        """uint8 HxWx3 images -> {"pixel_values": float32 [B, 3, H, W]} (channels last in,
        always: the layout is stated, never guessed)."""
        from PIL import Image

        height, width = self.size
        out = np.empty((len(images), 3, height, width), np.float32)
        mean = np.asarray(self.image_mean, np.float32)[:, None, None]
        std = np.asarray(self.image_std, np.float32)[:, None, None]
        for i, image in enumerate(images):
            picture = Image.fromarray(np.asarray(image, np.uint8))
            if picture.size != (width, height):
                picture = picture.resize((width, height), self.resample)
            chw = np.asarray(picture, np.float32).transpose(2, 0, 1)
            out[i] = (chw * np.float32(self.rescale_factor) - mean) / std
        return {"pixel_values": out}


class PatchSequenceProcessor:
    """The family's processor for images only, at one fixed square resolution.

    Same interface as a Hugging Face processor where VisionLanguageModel uses one
    (`image_processor`, `tokenizer`, `apply_chat_template`, `__call__`), plus `model_pixels`,
    which turns [B, 3, H, W] pixel values into what the model takes."""

    def __init__(
        self, image_processor: Any, tokenizer: Any, chat_template: str, image_size: int
    ) -> None:
        self.grid = PatchGrid.of(image_processor)
        self.grid.check(image_size)
        self.image_processor = ResizedImageProcessor.like(image_processor, image_size)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token: str = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_tokens = self.grid.tokens(image_size, image_size)
        self.grid_thw = self.grid.grid_thw(image_size, image_size)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], image_processor: Any, image_size: int | None
    ) -> PatchSequenceProcessor:
        from transformers import AutoTokenizer

        if not image_size:
            raise ValueError(
                f"{path}: this checkpoint's processor has no fixed resolution (a "
                "dynamic-resolution family such as Qwen2.5-VL); set mllm.image_size, a "
                f"multiple of {PatchGrid.of(image_processor).unit}, e.g. 448"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        tokenizer.padding_side = "left"
        return cls(image_processor, tokenizer, _chat_template(Path(path), tokenizer), image_size)

    def apply_chat_template(
        self, conversation: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def __call__(
        self, images: Sequence[np.ndarray], text: Sequence[str], return_tensors: str = "np"
    ) -> dict[str, np.ndarray]:
        """One image per text: the image token expanded to the merged-patch count, as the
        family's processor does, and pixel values in the model's patch layout."""
        if len(images) != len(text):
            raise ValueError(f"{len(text)} texts for {len(images)} images (one image each)")
        expanded = []
        for row in text:
            if row.count(self.image_token) != 1:
                raise ValueError(f"each text must hold the image token {self.image_token} once")
            expanded.append(row.replace(self.image_token, self.image_token * self.image_tokens))
        import torch

        encoded = self.tokenizer(expanded, padding=True, return_tensors="np")
        pixels = torch.from_numpy(self.image_processor(images)["pixel_values"])
        return {
            "input_ids": np.asarray(encoded["input_ids"]),
            "attention_mask": np.asarray(encoded["attention_mask"]),
            "pixel_values": self.model_pixels(pixels).numpy(),
            "image_grid_thw": np.asarray([self.grid_thw] * len(images), np.int64),
        }

    def model_pixels(self, values: torch.Tensor) -> torch.Tensor:
        return self.grid.patchify(values)


def _chat_template(root: Path, tokenizer: Any) -> str:
    """The processor's chat template (chat_template.jinja, or the older chat_template.json),
    else the tokenizer's own."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    legacy = root / "chat_template.json"
    if legacy.is_file():
        return str(json.loads(legacy.read_text())["chat_template"])
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.chat_template)
    raise ValueError(f"{root}: no chat template (chat_template.jinja / .json or the tokenizer's)")
