"""Triton adapter: a VLM through TensorRT-LLM's LLM API, behind the cpu profile's mllm
interface. The noisy normalised image is turned back into 8-bit pixels (Qwen2.5-VL's own
processor patches it; it has no fixed resolution) and sent, one request per image, to the
decoupled mllm_llm, which holds the LLM and batches everything in flight."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.adapters.trtllm import denormalize_to_uint8
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    image_size_parameter,
    limit_threads,
    model_parameters,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        self.preprocess = ImagePreprocessor.load(params["model_path"], image_size_parameter(params))
        self.llm_model = params["llm_model"]

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        try:
            images = self._images(request)
            prompts = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)
            if len(prompts) != len(images):
                raise InvalidRequest(f"{len(prompts)} prompts for {len(images)} images")
            tokens = pb_utils.get_input_tensor_by_name(request, "MAX_NEW_TOKENS")
            limits = (
                [int(v) for v in tokens.as_numpy().reshape(-1)]
                if tokens is not None
                else [self.settings.max_new_tokens] * len(images)
            )
            if any(not 1 <= v <= self.settings.max_new_tokens_limit for v in limits):
                raise InvalidRequest("MAX_NEW_TOKENS outside [1, max_new_tokens_limit]")
            calls = zip(images, prompts, limits, strict=True)
            texts = await asyncio.gather(*(self._generate(*call) for call in calls))
        except Exception as exc:  # noqa: BLE001 - this request alone fails
            return error_response(exc)
        return pb_utils.InferenceResponse([bytes_tensor("TEXT", texts, (len(texts), 1))])

    def _images(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "PIXEL_VALUES")
        if tensor is not None:
            pixels = tensor.as_numpy()
        else:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            if image is None:
                raise InvalidRequest("send IMAGE or PIXEL_VALUES")
            pixels = self.preprocess(list(image.as_numpy()))
        p = self.preprocess
        return [denormalize_to_uint8(np.asarray(x), p.mean, p.std) for x in pixels]

    async def _generate(self, image, prompt, max_new_tokens):
        responses = await pb_utils.InferenceRequest(
            model_name=self.llm_model,
            requested_output_names=["TEXT"],
            inputs=[
                pb_utils.Tensor("IMAGE", np.ascontiguousarray(image)),
                pb_utils.Tensor("PROMPT", np.array([prompt], dtype=np.object_)),
                pb_utils.Tensor("MAX_NEW_TOKENS", np.array([max_new_tokens], dtype=np.int32)),
            ],
        ).async_exec(decoupled=True)
        for response in responses:  # one answer, then the final (empty) flag
            if response.has_error():
                raise RuntimeError(f"{self.llm_model}: {response.error().message()}")
            text = pb_utils.get_output_tensor_by_name(response, "TEXT")
            if text is not None:
                return text.as_numpy().reshape(-1)[0].decode("utf-8", errors="replace")
        raise RuntimeError(f"{self.llm_model} gave no answer")
