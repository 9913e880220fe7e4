"""Request validation: every bad input gets an InvalidRequest naming the problem."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from smoothguard.core.settings import InvalidRequest
from smoothguard.core.validation import (
    check_embeddings,
    check_image_array,
    check_pixel_values,
    decode_image_bytes,
    decode_prompt,
    decode_texts,
    image_from_inputs,
    scrub,
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


def test_undecodable_bytes_name_no_object_address() -> None:
    """PIL says "cannot identify image file <_io.BytesIO object at 0x7f...>": not to a caller."""
    with pytest.raises(InvalidRequest) as info:
        decode_image_bytes(b"definitely not a png", **LIMITS)
    message = str(info.value)
    assert message.startswith("IMAGE_BYTES could not be decoded")
    assert "0x" not in message and "object at" not in message, message


def test_scrub_removes_reprs_and_addresses() -> None:
    text = scrub(
        "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90> at 0xdeadbeef00"
    )
    assert text == "cannot identify image file <data> at 0x…"
    assert len(scrub("x" * 1000)) == 300


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 3), "1x1 pixels; each side must be at least 4"),
        ((1, 4096, 3), "4096x1 pixels; each side must be at least 4"),
        ((3, 3, 3), "each side must be at least 4"),
        ((4, 4096, 3), "aspect ratio of 1024:1, over the limit of 32:1"),
    ],
)
def test_tiny_and_thin_images_are_refused_not_guessed(
    shape: tuple[int, int, int], message: str
) -> None:
    limits = {"max_pixels": 1 << 24, "min_side": 4, "max_aspect": 32.0}
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        check_image_array(np.zeros(shape, np.uint8), **limits)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        decode_image_bytes(encoded(np.zeros(shape, np.uint8), "PNG"), max_bytes=1 << 20, **limits)
    assert check_image_array(np.zeros((4, 128, 3), np.uint8), **limits).shape == (4, 128, 3)


def test_pixel_values_bound_and_rows() -> None:
    good = np.zeros((2, 3, 8, 8), np.float32)
    assert check_pixel_values(good, image_size=None, max_abs=5.0, max_rows=2) is good
    with pytest.raises(InvalidRequest, match="over the limit of 1"):
        check_pixel_values(good, image_size=(8, 8), max_rows=1)
    with pytest.raises(InvalidRequest, match="no rows"):
        check_pixel_values(good[:0], image_size=(8, 8))
    huge = good.copy()
    huge[0, 0, 0, 0] = 1e30
    with pytest.raises(InvalidRequest, match=r"magnitude 1e\+30, over the limit of 5"):
        check_pixel_values(huge, image_size=(8, 8), max_abs=5.0)
    with pytest.raises(InvalidRequest, match=r"\[N, 3, H, W\]"):
        check_pixel_values(np.zeros((2, 4, 8, 8), np.float32), image_size=None)


def test_embeddings_checks() -> None:
    good = np.eye(3, dtype=np.float32)
    assert check_embeddings(good, 3) is good
    for bad, message in [
        (good[:2], "one row per candidate"),
        (good.astype(np.float64), "float32"),
        (np.zeros((3, 0), np.float32), "dimensions"),
        (np.full((3, 3), np.nan, np.float32), "NaN"),
        (np.full((3, 3), 1e20, np.float32), "magnitude"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            check_embeddings(bad, 3)


def test_decode_texts_bounds_rows_and_length() -> None:
    column = np.array([[b"yes"], ["é".encode()]], np.object_)
    assert decode_texts(column, name="TEXT", max_chars=5, max_rows=2) == ["yes", "é"]
    for raw, kwargs, message in [
        (column, {"max_rows": 1}, "2 rows, over the limit of 1"),
        (np.array([[b"x" * 21]], np.object_), {}, "21 bytes, over the limit of 5 characters"),
        (np.array([[b"x" * 6]], np.object_), {}, "6 characters, over the limit of 5"),
        (np.array([[b"\xff"]], np.object_), {}, "row 0 is not valid UTF-8"),
        (np.zeros((0, 1), np.object_), {}, "no rows"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            decode_texts(raw, name="TEXT", **({"max_chars": 5, "max_rows": 8} | kwargs))


def test_oversized_prompt_bytes_are_refused_before_decoding() -> None:
    with pytest.raises(InvalidRequest, match="bytes, over the limit of 10 characters"):
        decode_prompt(b"x" * 41, max_chars=10)
