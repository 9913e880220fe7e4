"""The model's image preprocessing: stated layout, and the light config reader generate uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoothguard.adapters.preprocess import ImageInputSpec, ImagePreprocessor, read_image_input_spec

REPO_ROOT = Path(__file__).resolve().parents[3]
SYNTHVLM = REPO_ROOT / "models" / "synthvlm"


@pytest.fixture(scope="module")
def processor() -> ImagePreprocessor:
    return ImagePreprocessor.load(SYNTHVLM)


def test_config_reader_agrees_with_the_processor(processor: ImagePreprocessor) -> None:
    """generate checks PIXEL_VALUES with what the JSON says; noise makes them with transformers."""
    spec = read_image_input_spec(SYNTHVLM)
    assert spec == ImageInputSpec(processor.image_size, processor.mean, processor.std)


def test_channels_are_last_even_where_a_guess_would_say_first(
    processor: ImagePreprocessor,
) -> None:
    """A 3 x 50 red strip: guessing, the processor would read its 3 rows as channels."""
    red = np.zeros((3, 50, 3), np.uint8)
    red[..., 0] = 255
    out = processor([red])
    assert out.shape == (1, 3, *processor.image_size)
    expected = [(1 - processor.mean[0]) / processor.std[0], -processor.mean[1] / processor.std[1]]
    centre = out[0, :, processor.image_size[0] // 2, processor.image_size[1] // 2]
    np.testing.assert_allclose(centre[:2], expected, atol=0.05)


@pytest.mark.parametrize(
    ("config", "size"),
    [
        ({"do_center_crop": True, "crop_size": 336, "size": {"shortest_edge": 336}}, (336, 336)),
        ({"do_resize": True, "size": {"height": 448, "width": 224}}, (448, 224)),
        ({"do_resize": True, "size": {"shortest_edge": 336}}, None),  # no fixed resolution
        ({"do_resize": True, "size": {"longest_edge": 1024}, "min_pixels": 3136}, None),
    ],
)
def test_config_reader_resolutions(tmp_path: Path, config: dict, size: tuple | None) -> None:
    body = config | {"image_mean": 0.5, "image_std": [0.5, 0.25, 0.5]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(body))
    spec = read_image_input_spec(tmp_path)
    assert spec.image_size == size
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.25, 0.5)


def test_config_reader_needs_a_processor_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_mean"):
        read_image_input_spec(tmp_path)
