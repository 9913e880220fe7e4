"""Turn whatever image a caller has into what the server accepts, failing early and clearly.

PNG and JPEG files travel as their own bytes (IMAGE_BYTES): smaller on the wire, decoded once
on the server. Anything else is decoded here to an RGB uint8 array (IMAGE).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

ImageLike: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
)


@dataclass(frozen=True, eq=False)
class ImagePayload:
    """Exactly one of `encoded` (PNG/JPEG bytes) or `array` (uint8 [H, W, 3])."""

    encoded: bytes | None = None
    array: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.encoded is None) == (self.array is None):
            raise ValueError("ImagePayload needs exactly one of encoded or array")

    def to_array(self) -> np.ndarray:
        """The pixels as uint8 [H, W, 3], decoding locally for models without IMAGE_BYTES."""
        if self.array is not None:
            return self.array
        assert self.encoded is not None
        return decode_image_bytes(self.encoded)


def encoded_format(data: bytes) -> str | None:
    """'png' or 'jpeg' when the bytes start like one (the formats the server decodes)."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def check_image_array(array: np.ndarray) -> np.ndarray:
    """Reject what the server would reject, with the same wording, before any network trip."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"image array must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(
            f"image array must be uint8 (0-255 RGB), got {array.dtype}; "
            "convert with (x * 255).round().clip(0, 255).astype(np.uint8) if it is 0-1 float"
        )
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image array must have shape [H, W, 3] (RGB), got {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {list(array.shape)}")
    return np.ascontiguousarray(array)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """RGB pixels of any PIL mode (alpha is dropped, palettes and greyscale expanded)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return check_image_array(np.asarray(rgb, dtype=np.uint8))


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decode any format PIL reads into RGB pixels."""
    if not data:
        raise ValueError("image bytes are empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return pil_to_array(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL reports unreadable and truncated files as OSError (UnidentifiedImageError).
        raise ValueError(f"image bytes could not be decoded: {exc}") from exc


def _from_bytes(data: bytes) -> ImagePayload:
    if not data:
        raise ValueError("image bytes are empty")
    if encoded_format(data):
        return ImagePayload(encoded=data)
    return ImagePayload(array=decode_image_bytes(data))


def load_image(image: ImageLike) -> ImagePayload:
    """Accept a file path, encoded file bytes, a PIL image or a uint8 [H, W, 3] array."""
    if isinstance(image, ImagePayload):
        return image
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
        try:
            return _from_bytes(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if isinstance(image, bytes | bytearray | memoryview):
        return _from_bytes(bytes(image))
    if isinstance(image, Image.Image):
        return ImagePayload(array=pil_to_array(image))
    if isinstance(image, np.ndarray):
        return ImagePayload(array=check_image_array(image))
    raise TypeError(
        "image must be a path, PNG/JPEG bytes, a PIL.Image or a uint8 [H, W, 3] numpy array, "
        f"got {type(image).__name__}"
    )
