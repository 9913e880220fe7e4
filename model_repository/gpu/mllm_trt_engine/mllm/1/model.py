"""Triton adapter: LLaVA-1.5 on TensorRT-LLM engines behind the cpu profile's mllm interface.

Per image: one request to the vision model (its dynamic batcher batches images across
adapters; the prompt table stays on the GPU), then one request to the LLM engine with that
table, so TensorRT-LLM's in-flight batcher runs it alongside everyone else's. Replaces
TensorRT-LLM's deprecated multimodal ensemble (preprocessing -> multimodal_encoders ->
tensorrt_llm -> postprocessing) with one small model of our own.
"""

import asyncio
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.adapters.trtllm import PromptTableLayout
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.validation import decode_prompt
from smoothguard_triton.glue import bytes_tensor, error_response, limit_threads, model_parameters


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        path = Path(params["model_path"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = json.loads((path / "config.json").read_text())
        vocab = int(config.get("text_config", config).get("vocab_size", len(self.tokenizer)))
        self.visual = int(params["num_visual_features"])
        self.layout = PromptTableLayout(
            vocab, self.visual, int(params["max_text_len"]), bos_id=self.tokenizer.bos_token_id
        )
        self.end_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else int(pad)
        self.preprocess = ImagePreprocessor.load(path)
        self.vision_model, self.llm_model = params["vision_model"], params["llm_model"]

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        try:
            pixels = self._pixels(request)
            prompts = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)
            if len(prompts) != len(pixels):
                raise InvalidRequest(f"{len(prompts)} prompts for {len(pixels)} images")
            new_tokens = self._max_new_tokens(request, len(prompts))
            calls = zip(pixels, prompts, new_tokens, strict=True)
            texts = await asyncio.gather(*(self._answer(*call) for call in calls))
        except Exception as exc:  # noqa: BLE001 - this request alone fails
            return error_response(exc)
        return pb_utils.InferenceResponse([bytes_tensor("TEXT", texts, (len(texts), 1))])

    def _pixels(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "PIXEL_VALUES")
        if tensor is not None:
            return tensor.as_numpy()
        image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        if image is None:
            raise InvalidRequest("send IMAGE or PIXEL_VALUES")
        return self.preprocess(list(image.as_numpy()))

    def _max_new_tokens(self, request, rows):
        tensor = pb_utils.get_input_tensor_by_name(request, "MAX_NEW_TOKENS")
        if tensor is None:
            return [self.settings.max_new_tokens] * rows
        values = [int(v) for v in tensor.as_numpy().reshape(-1)]
        if any(not 1 <= v <= self.settings.max_new_tokens_limit for v in values):
            raise InvalidRequest("MAX_NEW_TOKENS outside [1, max_new_tokens_limit]")
        return values

    async def _answer(self, pixels, raw_prompt, max_new_tokens):
        prompt = decode_prompt(raw_prompt, max_chars=self.settings.max_prompt_chars)
        ids = self.layout.input_ids(
            lambda text: self.tokenizer.encode(text, add_special_tokens=False), prompt
        )
        table = await self._vision(pixels)
        return await self._generate(table, ids, max_new_tokens)

    async def _vision(self, pixels):
        """One image [3, H, W] -> its prompt table [1, 576, hidden] fp16, left on the GPU."""
        image = pb_utils.Tensor("input", np.ascontiguousarray(pixels[None], dtype=np.float32))
        response = await pb_utils.InferenceRequest(
            model_name=self.vision_model, requested_output_names=["encoder_output"], inputs=[image]
        ).async_exec()
        if response.has_error():
            raise RuntimeError(f"{self.vision_model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "encoder_output")

    async def _generate(self, table, ids, max_new_tokens):
        def scalar(name, value, dtype=np.int32):
            return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))

        response = await pb_utils.InferenceRequest(
            model_name=self.llm_model,
            requested_output_names=["output_ids", "sequence_length"],
            inputs=[
                pb_utils.Tensor("input_ids", ids[None, :]),
                scalar("input_lengths", len(ids)),
                scalar("request_output_len", max_new_tokens),
                scalar("end_id", self.end_id),
                scalar("pad_id", self.pad_id),
                # Greedy: the noise, not sampling, is what makes the N answers differ.
                scalar("runtime_top_k", 1),
                pb_utils.Tensor.from_dlpack("prompt_embedding_table", table.to_dlpack()),
                scalar("prompt_vocab_size", self.visual),
            ],
        ).async_exec()
        if response.has_error():
            raise RuntimeError(f"{self.llm_model}: {response.error().message()}")
        out = pb_utils.get_output_tensor_by_name(response, "output_ids").as_numpy()
        length = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
        tokens = out.reshape(-1, out.shape[-1])[0][: int(length.reshape(-1)[0])]
        return self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()
