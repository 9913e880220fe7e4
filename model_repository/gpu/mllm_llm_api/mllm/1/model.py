"""Triton adapter: a VLM through TensorRT-LLM's LLM API (PyTorch backend), behind the cpu
profile's mllm interface. The only TensorRT-LLM path for Qwen2.5-VL.

Every image of every request goes to the LLM at once (generate_async); the LLM's executor
batches them in flight. The noisy normalised image is turned back into 8-bit pixels, which
the runtime's own processor then patches (Qwen2.5-VL has no fixed-resolution input).
"""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.settings import DefenseSettings, InvalidRequest
from smoothguard.trtllm import FixedResolutionPreprocessor, denormalize_to_uint8
from smoothguard.validation import decode_prompt
from smoothguard_triton.glue import bytes_tensor, error_response, limit_threads, model_parameters


def _llm_class():
    """The PyTorch-backend LLM: tensorrt_llm._torch.LLM up to 0.21; from 1.0 the default."""
    try:
        from tensorrt_llm._torch import LLM  # TensorRT-LLM <= 0.21
    except ImportError:
        from tensorrt_llm import LLM
    return LLM


class TritonPythonModel:
    def initialize(self, args):
        from PIL import Image
        from tensorrt_llm import SamplingParams
        from transformers import AutoProcessor

        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        path = params["model_path"]
        self.preprocess = FixedResolutionPreprocessor.load(path, int(params["image_size"]))
        self.processor = AutoProcessor.from_pretrained(path)
        self.llm = _llm_class()(
            model=path,
            max_batch_size=int(params["max_batch_size"]),
            max_seq_len=int(params["max_seq_len"]),
            kv_cache_config={
                "free_gpu_memory_fraction": float(params["kv_cache_free_gpu_mem_fraction"]),
                # Copies share the text prefix but not the image: no block reuse.
                "enable_block_reuse": False,
            },
        )
        self._sampling, self._image = SamplingParams, Image

    def finalize(self):
        self.llm.shutdown()

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
        return [
            self._image.fromarray(denormalize_to_uint8(np.asarray(x), p.mean, p.std))
            for x in pixels
        ]

    async def _generate(self, image, raw_prompt, max_new_tokens):
        prompt = decode_prompt(raw_prompt, max_chars=self.settings.max_prompt_chars)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        output = self.llm.generate_async(
            {"prompt": text, "multi_modal_data": {"image": [image]}},
            # Greedy: the noise, not sampling, is what makes the N answers differ.
            sampling_params=self._sampling(max_tokens=max_new_tokens, temperature=0.0),
        )
        result = await output.aresult()
        return result.outputs[0].text.strip()
