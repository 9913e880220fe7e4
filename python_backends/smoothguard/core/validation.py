"""Turn raw request tensors into checked Python values, or raise InvalidRequest.

Every message names the input and the problem, because it goes back to the caller verbatim
as an INVALID_ARGUMENT error.
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from smoothguard.core.certify import MAX_ANSWER_CHARS, MAX_ANSWERS
from smoothguard.core.settings import InvalidRequest

# Reprs such as "<_io.BytesIO object at 0x7f...>" that library errors embed: a refusal goes to
# the caller verbatim, and a heap address tells them nothing but something about the server.
_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")

# Sentence-encoder inputs are model answers (max_new_tokens long); these bound a direct call.
DEFAULT_MAX_TEXT_CHARS = 4096
# Embedding width the aggregate step accepts: encoders have hundreds to a few thousand dims.
MAX_EMBEDDING_DIM = 16384
# |value| above this is no embedding (ours are unit vectors) and would overflow float32 squares
# in k-means (1e19^2 > float32 max); well below that, and far above any real encoder's output.
MAX_EMBEDDING_ABS = 1e4


def scrub(message: str, limit: int = 300) -> str:
    """A library's error text fit to send back: no object reprs or addresses, bounded length."""
    text = _ADDRESS.sub("0x…", _OBJECT_REPR.sub("<data>", message))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_image_bytes(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    min_side: int = 1,
    max_aspect: float = math.inf,
) -> np.ndarray:
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
            check_image_sides(
                height, width, min_side=min_side, max_aspect=max_aspect, name="IMAGE_BYTES"
            )
            rgb = image.convert("RGB")
            rgb.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidRequest(
            f"IMAGE_BYTES rejected as a decompression bomb: {scrub(str(exc))}"
        ) from exc
    except UnidentifiedImageError as exc:
        # PIL's message is "cannot identify image file <_io.BytesIO object at 0x...>".
        raise InvalidRequest(
            "IMAGE_BYTES could not be decoded as PNG/JPEG: not an image format PIL recognises"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(
            f"IMAGE_BYTES could not be decoded as PNG/JPEG: {scrub(str(exc))}"
        ) from exc
    except Exception as exc:  # hostile bytes reach PIL's parsers, see below
        # Corrupt files make PIL's decoders raise more than OSError (EOFError, struct.error,
        # IndexError, TypeError, ...): every one of them is the caller's bad input, not a
        # server fault, so none may surface as INTERNAL.
        raise InvalidRequest(
            f"IMAGE_BYTES could not be decoded as PNG/JPEG: {type(exc).__name__}: {scrub(str(exc))}"
        ) from exc
    return np.asarray(rgb, dtype=np.uint8)


def check_image_sides(
    height: int, width: int, *, min_side: int, max_aspect: float, name: str = "IMAGE"
) -> None:
    """Refuse images too small to show anything, or so thin that resizing explodes them.

    The layout is fixed (H x W x 3, channels last), so nothing here, or downstream, guesses a
    channel axis; a 1x1 or 1x4096 image is refused for its size, not misread.
    """
    if min(height, width) < min_side:
        raise InvalidRequest(
            f"{name} is {width}x{height} pixels; each side must be at least {min_side}"
        )
    aspect = max(height, width) / min(height, width)
    if aspect > max_aspect:
        raise InvalidRequest(
            f"{name} is {width}x{height} pixels, an aspect ratio of {aspect:.0f}:1, over the "
            f"limit of {max_aspect:g}:1"
        )


def check_image_array(
    image: np.ndarray,
    *,
    max_pixels: int,
    name: str = "IMAGE",
    min_side: int = 1,
    max_aspect: float = math.inf,
) -> np.ndarray:
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
    check_image_sides(height, width, min_side=min_side, max_aspect=max_aspect, name=name)
    return image


def check_pixel_values(
    values: np.ndarray,
    *,
    image_size: tuple[int, int] | None,
    max_abs: float = math.inf,
    max_rows: int | None = None,
    name: str = "PIXEL_VALUES",
) -> np.ndarray:
    """Preprocessed float32 [B,3,H,W] at the model's resolution (None: any), finite, and
    within `max_abs` of zero: far outside the normalised range is no image (noise_value_bound
    in smoothguard.core.noise says how far a noisy copy can go)."""
    if values.dtype != np.float32:
        raise InvalidRequest(f"{name} must be float32, got {values.dtype}")
    if image_size is None:
        if values.ndim != 4 or values.shape[1] != 3:
            raise InvalidRequest(f"{name} must have shape [N, 3, H, W], got {list(values.shape)}")
    else:
        expected = (3, *image_size)
        if values.ndim != 4 or tuple(values.shape[1:]) != expected:
            raise InvalidRequest(
                f"{name} must have shape [N, {', '.join(map(str, expected))}], "
                f"got {list(values.shape)}"
            )
    check_rows(values.shape[0], name, max_rows)
    check_finite_bounded(values, name, max_abs)
    return values


def check_rows(rows: int, name: str, max_rows: int | None) -> None:
    """At least one row, and no more than the server's limit (None: Triton's batch limit)."""
    if rows < 1:
        raise InvalidRequest(f"{name} has no rows")
    if max_rows is not None and rows > max_rows:
        raise InvalidRequest(f"{name} has {rows} rows, over the limit of {max_rows}")


def check_finite_bounded(values: np.ndarray, name: str, max_abs: float) -> None:
    """All finite and |v| <= max_abs, in one pass over the data that overflows nothing."""
    if values.size == 0:
        return
    peak = float(np.max(np.abs(values)))  # NaN propagates; inf stays inf
    if not math.isfinite(peak):
        raise InvalidRequest(f"{name} contains NaN or infinite values")
    if peak > max_abs:
        raise InvalidRequest(
            f"{name} has a value of magnitude {peak:.3g}, over the limit of {max_abs:.3g}"
        )


def check_embeddings(embeddings: np.ndarray, rows: int) -> np.ndarray:
    """EMBEDDINGS for `rows` candidates: float32 [rows, D], 1 <= D <= MAX_EMBEDDING_DIM,
    finite and bounded (see MAX_EMBEDDING_ABS)."""
    if embeddings.dtype != np.float32:
        raise InvalidRequest(f"EMBEDDINGS must be float32, got {embeddings.dtype}")
    if embeddings.ndim != 2 or embeddings.shape[0] != rows:
        raise InvalidRequest(
            f"EMBEDDINGS must have one row per candidate ({rows}), got shape "
            f"{list(embeddings.shape)}"
        )
    if not 1 <= embeddings.shape[1] <= MAX_EMBEDDING_DIM:
        raise InvalidRequest(
            f"EMBEDDINGS must have 1 to {MAX_EMBEDDING_DIM} dimensions, got {embeddings.shape[1]}"
        )
    check_finite_bounded(embeddings, "EMBEDDINGS", MAX_EMBEDDING_ABS)
    return embeddings


def decode_texts(raw: np.ndarray, *, name: str, max_chars: int, max_rows: int) -> list[str]:
    """A column of UTF-8 strings, one per row, each at most `max_chars` characters. The byte
    length is checked first, so an oversized element is refused before it is decoded."""
    items = raw.reshape(-1)
    check_rows(items.size, name, max_rows)
    texts = []
    for index, item in enumerate(items):
        if not isinstance(item, bytes | np.bytes_):
            raise InvalidRequest(f"{name} row {index} must be bytes, got {type(item).__name__}")
        if len(item) > 4 * max_chars:  # UTF-8 takes at most 4 bytes a character
            raise InvalidRequest(
                f"{name} row {index} has {len(item)} bytes, over the limit of {max_chars} "
                "characters"
            )
        try:
            text = bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{name} row {index} is not valid UTF-8: {exc.reason}") from exc
        if len(text) > max_chars:
            raise InvalidRequest(
                f"{name} row {index} has {len(text)} characters, over the limit of {max_chars}"
            )
        texts.append(text)
    return texts


def decode_prompt(raw: object, *, max_chars: int) -> str:
    """UTF-8 text, non-empty after stripping, no longer than the configured limit."""
    if isinstance(raw, bytes | np.bytes_):
        if len(raw) > 4 * max_chars:  # refused before decoding megabytes
            raise InvalidRequest(
                f"PROMPT has {len(raw)} bytes, over the limit of {max_chars} characters"
            )
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"PROMPT is not valid UTF-8: {exc.reason} at byte {exc.start}"
            ) from exc
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


def decode_answer_set(raw: np.ndarray | None) -> list[str] | None:
    """ANSWER_SET's strings (None when not sent), bounded in count and bytes before decoding;
    the words themselves are checked with the rest of the options (resolve_options)."""
    if raw is None:
        return None
    return decode_texts(raw, name="ANSWER_SET", max_chars=MAX_ANSWER_CHARS, max_rows=MAX_ANSWERS)


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
    min_side: int = 1,
    max_aspect: float = math.inf,
) -> np.ndarray:
    """Exactly one of IMAGE (raw uint8 HxWx3) or IMAGE_BYTES (PNG/JPEG) must be sent."""
    if (image is None) == (image_bytes is None):
        raise InvalidRequest(
            "send exactly one of IMAGE (uint8 [H, W, 3]) or IMAGE_BYTES (PNG/JPEG)"
        )
    limits = {"max_pixels": max_pixels, "min_side": min_side, "max_aspect": max_aspect}
    if image is not None:
        return check_image_array(image, **limits)
    assert image_bytes is not None
    if image_bytes.size != 1:
        raise InvalidRequest(
            f"IMAGE_BYTES must hold one encoded image, got shape {list(image_bytes.shape)}"
        )
    data = image_bytes.reshape(-1)[0]
    if not isinstance(data, bytes | np.bytes_):
        raise InvalidRequest(f"IMAGE_BYTES must be bytes, got {type(data).__name__}")
    return decode_image_bytes(bytes(data), max_bytes=max_bytes, **limits)
