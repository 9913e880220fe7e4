"""TensorRT-LLM's LLM API (PyTorch backend) as a decoupled model: every request goes to the
LLM's generate_async at once and answers when its sequence ends, so the executor batches all
requests in flight. The mllm adapter turns the cpu interface into these requests."""

import asyncio

import triton_python_backend_utils as pb_utils

from smoothguard.core.settings import DefenseSettings
from smoothguard.core.validation import decode_prompt
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    limit_threads,
    model_parameters,
    required_input,
)


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
        await asyncio.gather(*(self._one(r) for r in requests))

    async def _one(self, request):
        sender = request.get_response_sender()
        try:
            image = self._image.fromarray(required_input(request, "IMAGE"))
            prompt = decode_prompt(
                required_input(request, "PROMPT").reshape(-1)[0],
                max_chars=self.settings.max_prompt_chars,
            )
            max_new_tokens = int(required_input(request, "MAX_NEW_TOKENS").reshape(-1)[0])
            text = await self._generate(image, prompt, max_new_tokens)
            response = pb_utils.InferenceResponse([bytes_tensor("TEXT", [text], (1,))])
        except Exception as exc:  # noqa: BLE001 - this request alone fails
            response = error_response(exc)
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    async def _generate(self, image, prompt, max_new_tokens):
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
