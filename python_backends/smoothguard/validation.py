"""Turn raw request tensors into checked Python values, or raise InvalidRequest.

Every message names the input and the problem, because it goes back to the caller verbatim
as an INVALID_ARGUMENT error.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from smoothguard.settings import InvalidRequest


def decode_image_bytes(data: bytes, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 HxWx3 RGB, checking size before decompressing."""
    if len(data) == 0:
        raise InvalidRequest("IMAGE_BYTES is empty")
    if len(data) > max_bytes:
        raise InvalidRequest(f"IMAGE_BYTES has {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels}"
                )
            if image.format not in ("PNG", "JPEG"):
                raise InvalidRequest(f"IMAGE_BYTES must be PNG or JPEG, got {image.format}")
            rgb = image.convert("RGB")
            rgb.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"IMAGE_BYTES rejected as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"IMAGE_BYTES could not be decoded as PNG/JPEG: {exc}") from exc
    except Exception as exc:  # hostile bytes reach PIL's parsers, see below
        # Corrupt files make PIL's decoders raise more than OSError (EOFError, struct.error,
        # IndexError, TypeError, ...): every one of them is the caller's bad input, not a
        # server fault, so none may surface as INTERNAL.
        raise InvalidRequest(
            f"IMAGE_BYTES could not be decoded as PNG/JPEG: {type(exc).__name__}: {exc}"
        ) from exc
    return np.asarray(rgb, dtype=np.uint8)


def check_image_array(image: np.ndarray, *, max_pixels: int, name: str = "IMAGE") -> np.ndarray:
    """Accept uint8 HxWx3 only; anything else is a caller error with a precise message."""
    if image.dtype != np.uint8:
        raise InvalidRequest(f"{name} must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidRequest(f"{name} must have shape [H, W, 3], got {list(image.shape)}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise InvalidRequest(f"{name} is empty: shape {list(image.shape)}")
    if height * width > max_pixels:
        raise InvalidRequest(
            f"{name} is {width}x{height} = {height * width} pixels, over the limit of {max_pixels}"
        )
    return image


def check_pixel_values(values: np.ndarray, *, image_size: tuple[int, int]) -> np.ndarray:
    """Preprocessed float32 [B,3,H,W] at the model's resolution, all finite."""
    if values.dtype != np.float32:
        raise InvalidRequest(f"PIXEL_VALUES must be float32, got {values.dtype}")
    expected = (3, *image_size)
    if values.ndim != 4 or tuple(values.shape[1:]) != expected:
        raise InvalidRequest(
            f"PIXEL_VALUES must have shape [N, {', '.join(map(str, expected))}], "
            f"got {list(values.shape)}"
        )
    if not np.isfinite(values).all():
        raise InvalidRequest("PIXEL_VALUES contains NaN or infinite values")
    return values


def decode_prompt(raw: object, *, max_chars: int) -> str:
    """UTF-8 text, non-empty after stripping, no longer than the configured limit."""
    if isinstance(raw, bytes | np.bytes_):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"PROMPT is not valid UTF-8: {exc}") from exc
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidRequest(f"PROMPT must be a string, got {type(raw).__name__}")
    if "\x00" in text:
        raise InvalidRequest("PROMPT contains a NUL character")
    if not text.strip():
        raise InvalidRequest("PROMPT is empty")
    if len(text) > max_chars:
        raise InvalidRequest(f"PROMPT has {len(text)} characters, over the limit of {max_chars}")
    return text.strip()


def single_scalar(array: np.ndarray | None, name: str) -> object | None:
    """A one-element option tensor as a Python scalar (None when the input was not sent)."""
    if array is None:
        return None
    if array.size != 1:
        raise InvalidRequest(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{name} is not valid UTF-8") from exc
    if isinstance(value, np.floating):
        if not math.isfinite(float(value)):
            raise InvalidRequest(f"{name} must be finite, got {float(value)}")
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def image_from_inputs(
    image: np.ndarray | None,
    image_bytes: np.ndarray | None,
    *,
    max_pixels: int,
    max_bytes: int,
) -> np.ndarray:
    """Exactly one of IMAGE (raw uint8 HxWx3) or IMAGE_BYTES (PNG/JPEG) must be sent."""
    if (image is None) == (image_bytes is None):
        raise InvalidRequest(
            "send exactly one of IMAGE (uint8 [H, W, 3]) or IMAGE_BYTES (PNG/JPEG)"
        )
    if image is not None:
        return check_image_array(image, max_pixels=max_pixels)
    assert image_bytes is not None
    if image_bytes.size != 1:
        raise InvalidRequest(
            f"IMAGE_BYTES must hold one encoded image, got shape {list(image_bytes.shape)}"
        )
    return decode_image_bytes(
        bytes(image_bytes.reshape(-1)[0]), max_bytes=max_bytes, max_pixels=max_pixels
    )
