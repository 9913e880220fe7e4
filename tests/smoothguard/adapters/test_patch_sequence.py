"""Dynamic-resolution checkpoints (Qwen2.5-VL) at one fixed resolution: the pixels reach the
model exactly as the family's own processor would build them, gradients reach the pixels, and
a misconfigured resolution is refused at load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.adapters.patch_sequence import PatchGrid, is_patch_sequence
from smoothguard.adapters.preprocess import ImagePreprocessor, read_image_input_spec
from smoothguard.synthetic.families import SERVE_IMAGE_SIZE
from smoothguard.synthetic.synthpope import generate_split

SIZE = SERVE_IMAGE_SIZE["qwen2_5_vl"]
assert SIZE is not None
GRID = PatchGrid(patch_size=14, merge_size=2, temporal_patch_size=2)


@pytest.fixture(scope="module")
def qwen(family_checkpoint: Callable[[str], Path]) -> Path:
    return family_checkpoint("qwen2_5_vl")


@pytest.fixture(scope="module")
def hf_processor(qwen: Path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(qwen, backend="pil")


@pytest.fixture(scope="module")
def vlm(qwen: Path) -> VisionLanguageModel:
    torch.set_num_threads(1)  # a random model's near-ties must not move with thread count
    return VisionLanguageModel.load(qwen, image_size=SIZE)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def test_the_checkpoint_is_recognised_as_a_patch_sequence(hf_processor) -> None:
    assert is_patch_sequence(hf_processor)
    assert PatchGrid.of(hf_processor) == GRID


@pytest.mark.parametrize("shape", [(112, 112), (56, 168), (84, 140)])
def test_patchify_is_the_processors_own_layout(hf_processor, shape: tuple[int, int]) -> None:
    """At sizes the processor keeps as they are, its patch rows and ours are the same."""
    image = _image(*shape)
    reference = hf_processor(images=[image], return_tensors="np")
    mean = torch.tensor(hf_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(hf_processor.image_std).view(3, 1, 1)
    chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    ours = GRID.patchify(((chw - mean) / std)[None])
    assert reference["image_grid_thw"].tolist() == [list(GRID.grid_thw(*shape))]
    np.testing.assert_allclose(ours.numpy(), reference["pixel_values"], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    blocks_h=st.integers(1, 4),
    blocks_w=st.integers(1, 4),
    merge=st.integers(1, 3),
    patch=st.integers(1, 4),
)
def test_patchify_moves_every_value_and_keeps_images_apart(
    batch: int, blocks_h: int, blocks_w: int, merge: int, patch: int
) -> None:
    grid = PatchGrid(patch, merge, temporal_patch_size=2)
    h, w = blocks_h * merge * patch, blocks_w * merge * patch
    values = torch.arange(batch * 3 * h * w, dtype=torch.float32).reshape(batch, 3, h, w)
    rows = grid.patchify(values)
    per_image = (h // patch) * (w // patch)
    assert rows.shape == (batch * per_image, 3 * 2 * patch * patch)
    for b in range(batch):
        mine = rows[b * per_image : (b + 1) * per_image].flatten().sort().values
        expected = values[b].flatten().repeat_interleave(2).sort().values
        assert torch.equal(mine, expected)


def test_an_image_of_any_size_is_resized_then_processed_as_the_processor_would(
    hf_processor, vlm: VisionLanguageModel
) -> None:
    from PIL import Image

    image = _image(150, 90, seed=1)
    resized = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    reference = hf_processor(images=[resized], return_tensors="np")["pixel_values"]
    ours = vlm.processor.model_pixels(vlm.preprocess([image]))
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5)


def test_prompt_holds_one_placeholder_per_merged_block(vlm: VisionLanguageModel) -> None:
    image_id = vlm.tokenizer.convert_tokens_to_ids(vlm.processor.image_token)
    ids = vlm.prompt_ids("Is there a red circle in the image?")
    assert ids.count(image_id) == GRID.tokens(SIZE, SIZE) == (SIZE // 28) ** 2


def test_served_answers_equal_the_families_own_inputs(
    hf_processor, vlm: VisionLanguageModel
) -> None:
    """Greedy answers through the adapter equal the model fed the family processor's patch
    rows and grid directly, row by row, in a left-padded batch of different prompts."""
    images = [s.image for s in generate_split("validation", 3)]
    prompts = ["Describe the image.", "Is there a red circle in the image?", "Tell me a joke."]
    ours = vlm.generate(vlm.preprocess(images), prompts, max_new_tokens=6)
    for image, prompt, answer in zip(images, prompts, ours, strict=True):
        from PIL import Image

        resized = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        reference = hf_processor(images=[resized], return_tensors="pt")
        inputs = vlm._batch([prompt])
        with torch.inference_mode():
            out = vlm.model.generate(
                **{k: v for k, v in inputs.items() if k != "image_grid_thw"},
                image_grid_thw=reference["image_grid_thw"],
                pixel_values=reference["pixel_values"],
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=vlm.pad_id,
            )
        text = vlm.tokenizer.decode(
            out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert answer == text.strip()


def test_gradients_reach_every_pixel_region(vlm: VisionLanguageModel) -> None:
    pixels = vlm.preprocess([_image(SIZE, SIZE, seed=2)]).requires_grad_(True)
    logprob = vlm.answer_logprob(pixels, "Is there a red circle in the image?", ["yes"])
    logprob.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    # every merged block of the image influences the answer
    blocks = pixels.grad.abs().sum(dim=1)[0].reshape(SIZE // 28, 28, SIZE // 28, 28)
    assert (blocks.sum(dim=(1, 3)) > 0).all()


def test_the_noise_step_and_generate_agree_with_the_model(qwen: Path, vlm) -> None:
    pre = ImagePreprocessor.load(qwen, SIZE)
    spec = read_image_input_spec(qwen, SIZE)
    image = _image(70, 130, seed=3)
    assert pre.image_size == spec.image_size == vlm.image_size == (SIZE, SIZE)
    assert spec.mean == pre.mean == vlm.image_mean and spec.std == pre.std == vlm.image_std
    np.testing.assert_array_equal(pre([image]), vlm.preprocess([image]).numpy())


def test_a_dynamic_checkpoint_needs_a_resolution_and_a_valid_one(qwen: Path) -> None:
    with pytest.raises(ValueError, match=r"set mllm\.image_size"):
        VisionLanguageModel.load(qwen)
    with pytest.raises(ValueError, match=r"set mllm\.image_size"):
        ImagePreprocessor.load(qwen)
    with pytest.raises(ValueError, match="multiple of 28"):
        VisionLanguageModel.load(qwen, image_size=100)
    with pytest.raises(ValueError, match="multiple of 28"):
        ImagePreprocessor.load(qwen, 100)


def test_a_fixed_checkpoint_refuses_another_resolution(
    family_checkpoint: Callable[[str], Path],
) -> None:
    llava = family_checkpoint("llava15")
    assert VisionLanguageModel.load(llava, image_size=336).image_size == (336, 336)
    for load in (
        lambda: VisionLanguageModel.load(llava, image_size=448),
        lambda: ImagePreprocessor.load(llava, 448),
        lambda: read_image_input_spec(llava, 448),
    ):
        with pytest.raises(ValueError, match="differs from the checkpoint's fixed"):
            load()
