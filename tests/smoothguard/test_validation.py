"""Request validation: every bad input gets an InvalidRequest naming the problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from smoothguard.settings import InvalidRequest
from smoothguard.validation import (
    check_image_array,
    check_pixel_values,
    decode_image_bytes,
    decode_prompt,
    image_from_inputs,
    single_scalar,
)

LIMITS = {"max_bytes": 1 << 20, "max_pixels": 128 * 128}


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decodes_png_and_jpeg(fmt: str) -> None:
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = decode_image_bytes(encoded(image, fmt), **LIMITS)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if fmt == "PNG":
        np.testing.assert_array_equal(out, image)


def test_greyscale_png_becomes_rgb() -> None:
    out = decode_image_bytes(encoded(np.zeros((5, 6), np.uint8), "PNG"), **LIMITS)
    assert out.shape == (5, 6, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "could not be decoded"),
        (encoded(np.zeros((200, 200, 3), np.uint8), "PNG"), "over the limit"),
        (encoded(np.zeros((8, 8, 3), np.uint8), "BMP"), "PNG or JPEG"),
        (encoded(np.zeros((8, 8, 3), np.uint8), "PNG")[:40], "could not be decoded"),
    ],
)
def test_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_image_bytes(data, **LIMITS)


def test_byte_limit() -> None:
    with pytest.raises(InvalidRequest, match="bytes"):
        decode_image_bytes(b"x" * 100, max_bytes=10, max_pixels=100)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((4, 4, 4), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((129, 128, 3), np.uint8), "over the limit"),
    ],
)
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_image_array(array, max_pixels=LIMITS["max_pixels"])


def test_pixel_values_checks() -> None:
    good = np.zeros((2, 3, 8, 8), np.float32)
    assert check_pixel_values(good, image_size=(8, 8)) is good
    with pytest.raises(InvalidRequest, match="shape"):
        check_pixel_values(good, image_size=(16, 16))
    bad = good.copy()
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        check_pixel_values(bad, image_size=(8, 8))
    with pytest.raises(InvalidRequest, match="float32"):
        check_pixel_values(good.astype(np.float64), image_size=(8, 8))


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"   ", "empty"), (b"\xff\xfe", "UTF-8"), (b"a\x00b", "NUL"), (b"x" * 11, "limit")],
)
def test_bad_prompts(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_prompt(raw, max_chars=10)


def test_prompt_is_stripped() -> None:
    assert decode_prompt(b"  hi there \n", max_chars=20) == "hi there"


def test_exactly_one_image_input() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    blob = np.array([encoded(image, "PNG")], dtype=np.object_)
    assert image_from_inputs(image, None, **LIMITS).shape == (4, 4, 3)
    assert image_from_inputs(None, blob, **LIMITS).shape == (4, 4, 3)
    for args in [(None, None), (image, blob)]:
        with pytest.raises(InvalidRequest, match="exactly one"):
            image_from_inputs(*args, **LIMITS)


def test_single_scalar() -> None:
    assert single_scalar(None, "X") is None
    assert single_scalar(np.array([3], np.int32), "X") == 3
    assert single_scalar(np.array([b"answer"], np.object_), "X") == "answer"
    assert single_scalar(np.array([True]), "X") is True
    with pytest.raises(InvalidRequest, match="exactly one"):
        single_scalar(np.array([1, 2]), "X")
    with pytest.raises(InvalidRequest, match="finite"):
        single_scalar(np.array([np.nan], np.float32), "X")
