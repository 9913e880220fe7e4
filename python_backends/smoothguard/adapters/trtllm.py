"""Pieces of the GPU MLLM adapters that need no GPU: prompt layout for TensorRT-LLM's prompt
table and image recovery (processors without a fixed resolution: adapters/patch_sequence.py).

Kept apart from the Triton adapters so they are unit-tested on CPU machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# LLaVA-1.5's conversation template (what llava-hf's chat template produces for one image).
LLAVA_PRE_PROMPT = "USER:\n"
LLAVA_POST_PROMPT = "\n{prompt} ASSISTANT:"


@dataclass(frozen=True)
class PromptTableLayout:
    """Token ids for one image + prompt in TensorRT-LLM's prompt-table convention.

    Ids ``vocab_size .. vocab_size + num_visual_features - 1`` stand for the rows of the
    request's prompt embedding table (the vision engine's output); they sit where the
    ``<image>`` token would be. ``max_text_len`` bounds every id that is not an image row,
    the BOS token included: the engine was built with max_input_len = max_text_len +
    num_visual_features, and one id more fails the request.
    """

    vocab_size: int
    num_visual_features: int
    max_text_len: int
    bos_id: int | None = None

    def input_ids(self, encode: Callable[[str], Sequence[int]], prompt: str) -> np.ndarray:
        """int32 ids: BOS + pre-prompt, the image rows, then the question (truncated)."""
        bos = [] if self.bos_id is None else [self.bos_id]
        pre = bos + list(encode(LLAVA_PRE_PROMPT))
        post = list(encode(LLAVA_POST_PROMPT.format(prompt=prompt)))
        budget = self.max_text_len - len(pre)
        if budget <= 0:
            raise ValueError("max_text_len leaves no room for the prompt")
        if len(post) > budget:
            # Keep the tail: " ASSISTANT:" must stay last for the model to answer.
            post = post[-budget:]
        image = np.arange(self.vocab_size, self.vocab_size + self.num_visual_features)
        return np.concatenate([pre, image, post]).astype(np.int32)

    @property
    def max_input_len(self) -> int:
        """The engine's max_input_len this layout fills at most (trtllm-build's flag)."""
        return self.max_text_len + self.num_visual_features


def denormalize_to_uint8(pixel_values: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """``[3, H, W]`` normalised -> ``[H, W, 3]`` uint8, for runtimes that preprocess themselves.

    Quantising to 8 bits keeps the noise: sigma 0.15 in normalised units is ~10/255 in pixels.
    """
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    pixels = np.clip(pixel_values.astype(np.float32) * s + m, 0.0, 1.0)
    return np.rint(pixels * 255.0).astype(np.uint8).transpose(1, 2, 0)
