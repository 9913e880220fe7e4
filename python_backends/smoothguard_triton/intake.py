"""A defended image request as it arrives from a client: PROMPT, the options and the image,
checked and preprocessed at the model's resolution. The first thing both defended image
endpoints do (the ensemble's noise step, the single-model endpoint)."""

from __future__ import annotations

from typing import Any

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.core.settings import DefenseSettings, RequestOptions
from smoothguard.core.validation import image_from_inputs
from smoothguard_triton.glue import (
    image_size_parameter,
    optional_input,
    request_options,
    request_prompt,
)


def load_preprocessor(params: dict[str, str]) -> ImagePreprocessor:
    """The model's own processor; for processors without a fixed resolution (Qwen2.5-VL) a
    resize to mllm.image_size."""
    return ImagePreprocessor.load(params["mllm_path"], image_size_parameter(params))


def image_request(
    request: Any, settings: DefenseSettings, preprocess: ImagePreprocessor, xp: Any
) -> tuple[str, RequestOptions, Any]:
    """(prompt, options, the normalised image [3, H, W] as an `xp` array)."""
    # PROMPT is optional in the configs only so that a request without one reaches this
    # line and is refused by name (the ensemble would otherwise wait for it forever).
    prompt = request_prompt(request, settings)
    options = request_options(request, settings)
    image = image_from_inputs(
        optional_input(request, "IMAGE"),
        optional_input(request, "IMAGE_BYTES"),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
        min_side=settings.min_image_side,
        max_aspect=settings.max_image_aspect,
    )
    return prompt, options, xp.asarray(preprocess([image])[0])
