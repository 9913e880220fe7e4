"""The table preprocessor: the same tensors as transformers' processor, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.adapters.table_preprocess import TableImageProcessor

REPO_ROOT = Path(__file__).resolve().parents[3]
SYNTHVLM = REPO_ROOT / "models" / "synthvlm"


def hf_processor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(path), backend="pil")

    def run(image: np.ndarray) -> np.ndarray:
        out = processor(images=[image], return_tensors="np", input_data_format="channels_last")
        return np.asarray(out["pixel_values"], dtype=np.float32)

    return run


@pytest.fixture(scope="module")
def checkpoints(family_checkpoint: Any) -> dict[str, Path]:
    """SynthVLM (a 64x64 resize) and LLaVA-1.5's processor (shortest edge 336, crop 336)."""
    return {"synthvlm": SYNTHVLM, "llava15": family_checkpoint("llava15")}


@pytest.mark.parametrize("name", ["synthvlm", "llava15"])
def test_equal_to_transformers_on_awkward_shapes(name: str, checkpoints: dict[str, Path]) -> None:
    path = checkpoints[name]
    table, hf = TableImageProcessor.from_config(path), hf_processor(path)
    assert table is not None
    rng = np.random.default_rng(7)
    for height, width in [(1, 1), (1, 300), (3, 50), (37, 53), (513, 77), (336, 336), (64, 500)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        np.testing.assert_array_equal(table([image]), hf(image), err_msg=f"{height}x{width}")


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 160),
    width=st.integers(1, 160),
    seed=st.integers(0, 2**32 - 1),
    flat=st.booleans(),
)
def test_equal_to_transformers_on_any_image(height: int, width: int, seed: int, flat: bool) -> None:
    """Random and flat images (every value of the table's rows, and runs of one value)."""
    rng = np.random.default_rng(seed)
    if flat:
        image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3))
        image = np.ascontiguousarray(image)
    else:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    table = TableImageProcessor.from_config(SYNTHVLM)
    assert table is not None
    np.testing.assert_array_equal(table([image]), _SYNTHVLM_HF(image))


_SYNTHVLM_HF = hf_processor(SYNTHVLM)


def test_every_table_entry_is_what_transformers_computes() -> None:
    """All 256 values of each channel at once: an image holding every value."""
    table = TableImageProcessor.from_config(SYNTHVLM)
    assert table is not None
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    size = table.image_size
    ramp = np.resize(ramp, (size[0], size[1], 3)).astype(
        np.uint8
    )  # 64 x 64 exactly: no resize blur
    np.testing.assert_array_equal(table([ramp]), _SYNTHVLM_HF(ramp))


def _edited(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(SYNTHVLM, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    path = folder / "processor_config.json"
    data = json.loads(path.read_text())
    change(data["image_processor"])
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(do_pad=True),  # a step the table does not do
        lambda c: c.pop("resample"),  # left to a class default: not guessed
        lambda c: c.update(image_processor_type="SiglipImageProcessor"),
        lambda c: c.update(size={"shortest_edge": 32}, do_center_crop=True),  # crop pads
        lambda c: c.update(size={"longest_edge": 64}),
    ],
    ids=["do_pad", "no_resample", "other_type", "crop_larger", "longest_edge"],
)
def test_anything_else_is_left_to_transformers(
    tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    assert TableImageProcessor.from_config(_edited(tmp_path, change)) is None


def test_the_qwen_family_keeps_the_hf_path(family_checkpoint: Any) -> None:
    assert TableImageProcessor.from_config(family_checkpoint("qwen2_5_vl")) is None


def test_the_noise_step_preprocessor_does_not_import_torch() -> None:
    """The point of the table: ~40 MiB per noise stub instead of ~360 with torch."""
    code = (
        "import sys; from smoothguard.adapters.preprocess import ImagePreprocessor; "
        f"p = ImagePreprocessor.load({str(SYNTHVLM)!r}); "
        "import numpy as np; p([np.zeros((9, 9, 3), np.uint8)]); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_image_preprocessor_uses_it_for_synthvlm() -> None:
    pre = ImagePreprocessor.load(SYNTHVLM)
    assert isinstance(pre.processor, TableImageProcessor)
    with pytest.raises(ValueError, match="differs"):
        ImagePreprocessor.load(SYNTHVLM, 112)
