"""Triton adapter for the vision-language model: every row of every batched request in one
generate() call per max_new_tokens value, so Triton's dynamic batcher really batches."""

from collections import defaultdict

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.mllm import VisionLanguageModel
from smoothguard.settings import DefenseSettings, InvalidRequest, resolve_options
from smoothguard.validation import check_image_array, check_pixel_values, decode_prompt
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    limit_threads,
    model_parameters,
    optional_input,
    required_input,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        # Profiles say cpu/gpu; torch says cpu/cuda (the gpu profile's HF fallback, gpu_check).
        device = "cuda" if params.get("device", "cpu") == "gpu" else "cpu"
        self.model = VisionLanguageModel.load(params["model_path"], device=device)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = defaultdict(list)  # max_new_tokens -> [(request index, pixels, prompts)]
        for index, request in enumerate(requests):
            try:
                pixels, prompts, max_new_tokens = self._parse(request)
                groups[max_new_tokens].append((index, pixels, prompts))
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                responses[index] = error_response(exc)
        for max_new_tokens, members in groups.items():
            try:
                pixels = np.concatenate([m[1] for m in members])
                prompts = [p for m in members for p in m[2]]
                texts = self.model.generate(pixels, prompts, max_new_tokens=max_new_tokens)
            except Exception as exc:  # noqa: BLE001
                for index, _, _ in members:
                    responses[index] = error_response(exc)
                continue
            start = 0
            for index, _, member_prompts in members:
                rows = texts[start : start + len(member_prompts)]
                start += len(member_prompts)
                responses[index] = pb_utils.InferenceResponse(
                    [bytes_tensor("TEXT", rows, (len(rows), 1))]
                )
        return responses

    def _parse(self, request):
        s = self.settings
        image = optional_input(request, "IMAGE")
        pixel_values = optional_input(request, "PIXEL_VALUES")
        if (image is None) == (pixel_values is None):
            raise InvalidRequest("send exactly one of IMAGE or PIXEL_VALUES")
        if image is not None:
            rows = [check_image_array(img, max_pixels=s.max_image_pixels) for img in image]
            pixels = self.model.preprocess(rows).numpy()
        else:
            pixels = check_pixel_values(pixel_values, image_size=self.model.image_size)
        raw_prompts = required_input(request, "PROMPT").reshape(-1)
        if raw_prompts.size != pixels.shape[0]:
            raise InvalidRequest("PROMPT must have one row per image")
        prompts = [decode_prompt(p, max_chars=s.max_prompt_chars) for p in raw_prompts]
        raw_tokens = optional_input(request, "MAX_NEW_TOKENS")
        tokens = None if raw_tokens is None else {int(t) for t in raw_tokens.reshape(-1)}
        if tokens is not None and len(tokens) != 1:
            raise InvalidRequest("MAX_NEW_TOKENS must be the same for every row of a request")
        options = resolve_options(s, max_new_tokens=None if tokens is None else tokens.pop())
        return pixels, prompts, options.max_new_tokens
