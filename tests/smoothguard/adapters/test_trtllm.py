"""GPU-adapter logic that runs without a GPU: prompt-table ids, pooling, pixel recovery,
the k-means backend switch."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard.adapters.trtllm import PromptTableLayout, denormalize_to_uint8
from smoothguard.core.kmeans import kmeans2


def fake_encode(text: str) -> list[int]:
    return [ord(c) % 100 for c in text]


def test_prompt_table_ids_sit_between_pre_and_post_prompt() -> None:
    layout = PromptTableLayout(vocab_size=32064, num_visual_features=576, max_text_len=64)
    ids = layout.input_ids(fake_encode, "What is this?")
    pre = fake_encode("USER:\n")
    assert ids.dtype == np.int32
    assert list(ids[: len(pre)]) == pre
    image = ids[len(pre) : len(pre) + 576]
    np.testing.assert_array_equal(image, np.arange(32064, 32064 + 576))
    assert list(ids[len(pre) + 576 :]) == fake_encode("\nWhat is this? ASSISTANT:")
    assert (ids[len(pre) + 576 :] < 32064).all()


@pytest.mark.parametrize("prompt", ["What is this?", "x" * 500])
def test_ids_with_bos_fit_the_engines_max_input_len(prompt: str) -> None:
    """BOS is one of the max_text_len ids: a long prompt fills max_input_len exactly, never
    one more (the engine refuses a longer input)."""
    layout = PromptTableLayout(vocab_size=1000, num_visual_features=4, max_text_len=20, bos_id=1)
    ids = layout.input_ids(fake_encode, prompt)
    assert ids[0] == 1 and list(ids).count(1) >= 1
    assert len(ids) <= layout.max_input_len == 24
    if len(prompt) > 100:
        assert len(ids) == layout.max_input_len
        assert list(ids[-len(" ASSISTANT:") :]) == fake_encode(" ASSISTANT:")


def test_long_prompt_keeps_the_assistant_tail() -> None:
    layout = PromptTableLayout(vocab_size=1000, num_visual_features=4, max_text_len=20)
    ids = layout.input_ids(fake_encode, "x" * 500)
    text = ids[ids < 1000]
    assert len(text) == 20
    assert list(text[-len(" ASSISTANT:") :]) == fake_encode(" ASSISTANT:")


def test_denormalize_round_trips_pixels() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    norm = (pixels.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[
        :, None, None
    ]
    np.testing.assert_array_equal(denormalize_to_uint8(norm.astype(np.float32), mean, std), pixels)


def test_cuml_backend_needs_gpu_input() -> None:
    x = np.random.default_rng(0).normal(size=(1, 20, 4))
    with pytest.raises(ValueError, match="CuPy"):
        kmeans2(x, backend="cuml")
    with pytest.raises(ValueError, match="backend"):
        kmeans2(x, backend="sklearn")
    np.testing.assert_array_equal(kmeans2(x, backend="xp").labels, kmeans2(x).labels)
