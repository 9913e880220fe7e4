"""Image arguments: every accepted kind becomes the right payload; bad ones fail before the wire."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from smoothguard_client.images import ImagePayload, encoded_format, load_image


def _pixels(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_files_are_sent_as_their_own_bytes(tmp_path: Path, fmt: str) -> None:
    data = _encode(_pixels(), fmt)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data)
    for argument in (path, str(path)):
        payload = load_image(argument)
        assert payload.encoded == data
        assert payload.array is None


def test_format_is_sniffed_from_content_not_extension(tmp_path: Path) -> None:
    data = _encode(_pixels(), "PNG")
    path = tmp_path / "misnamed.jpg.txt"
    path.write_bytes(data)
    assert load_image(path).encoded == data
    assert encoded_format(data) == "png"
    assert encoded_format(_encode(_pixels(), "JPEG")) == "jpeg"
    assert encoded_format(b"BM....") is None


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("GIF", "P"), ("TIFF", "RGB")])
def test_other_formats_are_decoded_to_rgb_pixels(tmp_path: Path, fmt: str, mode: str) -> None:
    pixels = _pixels()
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encode(pixels, fmt, mode))
    payload = load_image(path)
    assert payload.encoded is None
    assert payload.array is not None
    assert payload.array.dtype == np.uint8
    assert payload.array.shape == (5, 7, 3)
    if mode == "RGB":  # lossless formats: exact pixels
        np.testing.assert_array_equal(payload.array, pixels)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_encoded_bytes_in_memory(wrap: type) -> None:
    data = _encode(_pixels(), "PNG")
    payload = load_image(wrap(data))
    assert payload.encoded == data
    assert isinstance(payload.encoded, bytes)


def test_non_png_bytes_are_decoded() -> None:
    pixels = _pixels()
    payload = load_image(_encode(pixels, "BMP"))
    assert payload.encoded is None
    np.testing.assert_array_equal(payload.to_array(), pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_pil_images_of_any_mode_become_rgb_arrays(mode: str) -> None:
    image = Image.fromarray(_pixels()).convert(mode)
    payload = load_image(image)
    assert payload.array is not None
    assert payload.array.dtype == np.uint8
    assert payload.array.shape == (5, 7, 3)


def test_rgb_pil_image_keeps_its_pixels() -> None:
    pixels = _pixels()
    np.testing.assert_array_equal(load_image(Image.fromarray(pixels)).array, pixels)


def test_uint8_array_passes_through_as_contiguous() -> None:
    pixels = _pixels()
    flipped = pixels[:, ::-1]
    payload = load_image(flipped)
    assert payload.array is not None
    assert payload.array.flags.c_contiguous
    np.testing.assert_array_equal(payload.array, flipped)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "must be uint8"),
        (np.zeros((4, 4, 3), dtype=np.int64), "must be uint8"),
        (np.zeros((4, 4), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((1, 4, 4, 3), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((3, 4, 4), dtype=np.uint8), r"\[H, W, 3\]"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_rejected(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")


def test_undecodable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png.*could not be decoded"):
        load_image(path)


@pytest.mark.parametrize("data", [b"", b"garbage bytes"])
def test_bad_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"empty|could not be decoded"):
        load_image(data)


@pytest.mark.parametrize("value", [42, None, [[0, 0, 0]], 1.5])
def test_unsupported_types_say_what_is_accepted(value: object) -> None:
    with pytest.raises(TypeError, match=r"path, PNG/JPEG bytes, a PIL\.Image"):
        load_image(value)  # type: ignore[arg-type]


def test_payload_holds_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ImagePayload()
    with pytest.raises(ValueError, match="exactly one"):
        ImagePayload(encoded=b"x", array=_pixels())
    payload = ImagePayload(array=_pixels())
    assert load_image(payload) is payload


@settings(max_examples=25, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3)),
    )
)
def test_png_payload_decodes_back_to_the_same_pixels(pixels: np.ndarray) -> None:
    payload = load_image(_encode(pixels, "PNG"))
    assert payload.encoded is not None
    np.testing.assert_array_equal(payload.to_array(), pixels)
