"""The generic HF adapter: preprocessing, batched greedy generation, answer log-likelihoods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.synthetic.synthpope import generate_split

MODEL = Path(__file__).resolve().parents[3] / "models" / "synthvlm"
PROMPTS = [
    "Describe the image.",
    "Is there a red circle in the image?",
    "Tell me how to make this.",
    "Is there a blue square in the image?",
]


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel.load(MODEL)


@pytest.fixture(scope="module")
def pixels(model: VisionLanguageModel) -> torch.Tensor:
    return model.preprocess([s.image for s in generate_split("validation", len(PROMPTS))])


def test_preprocess_resizes_and_normalises(model: VisionLanguageModel) -> None:
    big = np.full((100, 140, 3), 255, np.uint8)
    pixels = model.preprocess([big, np.zeros((30, 30, 3), np.uint8)])
    assert pixels.shape == (2, 3, *model.image_size) and pixels.dtype == torch.float32
    expected_white = (1 - np.array(model.image_mean)) / np.array(model.image_std)
    np.testing.assert_allclose(pixels[0, :, 5, 5].numpy(), expected_white, rtol=1e-4)
    expected_black = -np.array(model.image_mean) / np.array(model.image_std)
    np.testing.assert_allclose(pixels[1, :, 5, 5].numpy(), expected_black, rtol=1e-4)
    # CLIP statistics: the space the defense's sigma is stated in
    np.testing.assert_allclose(model.image_std, (0.26862954, 0.26130258, 0.27577711), rtol=1e-6)


def test_batched_generate_equals_one_at_a_time(
    model: VisionLanguageModel, pixels: torch.Tensor
) -> None:
    batched = model.generate(pixels, PROMPTS, max_new_tokens=16)
    single = [
        model.generate(pixels[i : i + 1], p, max_new_tokens=16)[0] for i, p in enumerate(PROMPTS)
    ]
    assert batched == single
    assert all(batched)
    assert batched[1].split()[0] in ("yes", "no") and batched[3].split()[0] in ("yes", "no")


def test_one_prompt_is_broadcast(model: VisionLanguageModel, pixels: torch.Tensor) -> None:
    broadcast = model.generate(pixels, PROMPTS[0], max_new_tokens=16)
    assert broadcast == model.generate(pixels, [PROMPTS[0]] * len(PROMPTS), max_new_tokens=16)


def test_generate_accepts_numpy(model: VisionLanguageModel, pixels: torch.Tensor) -> None:
    as_numpy = model.generate(pixels.numpy(), PROMPTS, max_new_tokens=8)
    assert as_numpy == model.generate(pixels, PROMPTS, max_new_tokens=8)


def test_answer_logprob_prefers_the_models_own_answer(
    model: VisionLanguageModel, pixels: torch.Tensor
) -> None:
    own = model.generate(pixels, PROMPTS, max_new_tokens=24)
    flip = {"yes": "no", "no": "yes"}
    other = [flip.get(text, "nothing" if text != "nothing" else "a red circle") for text in own]
    with torch.no_grad():
        own_lp = model.answer_logprob(pixels, PROMPTS, own)
        other_lp = model.answer_logprob(pixels, PROMPTS, other)
        single = torch.cat(
            [model.answer_logprob(pixels[i : i + 1], [p], [own[i]]) for i, p in enumerate(PROMPTS)]
        )
    assert (own_lp > other_lp).all()
    assert (own_lp <= 0).all()
    torch.testing.assert_close(own_lp, single, rtol=1e-4, atol=1e-4)


def test_answer_ids_end_with_eos(model: VisionLanguageModel) -> None:
    ids = model.answer_ids(PROMPTS[1], "yes")
    assert ids[-1] == model.eos_id and len(ids) == 2
    assert model.tokenizer.decode(ids, skip_special_tokens=True).strip() == "yes"


def test_bad_pixel_shapes_are_refused(model: VisionLanguageModel) -> None:
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(torch.zeros(1, 3, 8, 8), "Describe the image.")
    with pytest.raises(ValueError, match="prompts"):
        model.generate(torch.zeros(2, 3, *model.image_size), ["a", "b", "c"])
    with pytest.raises(ValueError, match="answers"):
        model.answer_logprob(torch.zeros(2, 3, *model.image_size), "a", ["x"])


def test_preprocess_reads_channels_last_without_guessing(model: VisionLanguageModel) -> None:
    """A 3 x 40 red strip is red: the layout is stated, never inferred from the shape."""
    red = np.zeros((3, 40, 3), np.uint8)
    red[..., 0] = 255
    centre = model.preprocess([red])[0, :, model.image_size[0] // 2, model.image_size[1] // 2]
    mean, std = model.image_mean, model.image_std
    assert centre[0].item() == pytest.approx((1 - mean[0]) / std[0], abs=0.05)
    assert centre[1].item() == pytest.approx(-mean[1] / std[1], abs=0.05)
