"""Triton adapter for step 2 of smoothguard: N requests to the MLLM via BLS, gathered."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.settings import DefenseSettings, RequestOptions
from smoothguard_triton.glue import bytes_tensor, error_response, model_parameters, required_input


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.settings = DefenseSettings.from_parameters(params)
        self.mllm = params["mllm_model"]

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        try:
            pixel_values = required_input(request, "PIXEL_VALUES")
            prompt = required_input(request, "PROMPT").reshape(1, 1)
            options = RequestOptions.from_json(required_input(request, "OPTIONS").reshape(-1)[0])
            max_new_tokens = np.array([[options.max_new_tokens]], dtype=np.int32)
            calls = [
                pb_utils.InferenceRequest(
                    model_name=self.mllm,
                    requested_output_names=["TEXT"],
                    inputs=[
                        pb_utils.Tensor("PIXEL_VALUES", pixel_values[i : i + 1]),
                        pb_utils.Tensor("PROMPT", prompt),
                        pb_utils.Tensor("MAX_NEW_TOKENS", max_new_tokens),
                    ],
                ).async_exec()
                for i in range(pixel_values.shape[0])
            ]
            responses = await asyncio.gather(*calls)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_response(exc)
        texts, failures = [], []
        for index, response in enumerate(responses):
            if response.has_error():
                failures.append((index, response.error()))
                texts.append(None)
            else:
                text = pb_utils.get_output_tensor_by_name(response, "TEXT").as_numpy()
                texts.append(text.reshape(-1)[0].decode("utf-8", errors="replace"))
        if failures:
            clean_failed = texts[0] is None
            if self.settings.failure_mode == "closed" or clean_failed:
                index, error = failures[0]
                which = "the unperturbed sample" if clean_failed else f"sample {index}"
                message = (
                    f"{len(failures)} of {len(texts)} MLLM calls failed "
                    f"(failure_mode={self.settings.failure_mode}); {which}: {error.message()}"
                )
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, error.code()))
            texts = [t for t in texts if t is not None]  # fail open: vote with what answered
        return pb_utils.InferenceResponse([bytes_tensor("CANDIDATES", texts, (len(texts), 1))])
