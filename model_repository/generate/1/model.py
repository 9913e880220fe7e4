"""Triton adapter for step 2 of smoothguard: the noisy copies as separate requests to the
MLLM (BLS), so its batcher groups them with other users' requests; with adaptive sampling a
first round of a few copies, and the rest only when they disagree."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adaptive import first_round, unanimous
from smoothguard.settings import DefenseSettings, RequestOptions
from smoothguard_triton.glue import bytes_tensor, error_response, model_parameters, required_input


class SampleFailure(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


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
            n = pixel_values.shape[0]
            first = first_round(
                n, adaptive=options.adaptive, initial=self.settings.adaptive_initial
            )
            texts = await self._round(pixel_values, range(first), prompt, options)
            if first < n and not unanimous([t for t in texts if isinstance(t, str)]):
                texts += await self._round(pixel_values, range(first, n), prompt, options)
            texts = self._apply_failure_mode(texts)
        except SampleFailure as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), exc.code))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_response(exc)
        return pb_utils.InferenceResponse([bytes_tensor("CANDIDATES", texts, (len(texts), 1))])

    async def _round(self, pixel_values, indices, prompt, options):
        """One MLLM request per copy, all in flight at once; None where a call failed."""
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
            for i in indices
        ]
        texts = []
        for index, response in zip(indices, await asyncio.gather(*calls), strict=True):
            if response.has_error():
                texts.append(_Failed(index, response.error()))
            else:
                text = pb_utils.get_output_tensor_by_name(response, "TEXT").as_numpy()
                texts.append(text.reshape(-1)[0].decode("utf-8", errors="replace"))
        return texts

    def _apply_failure_mode(self, texts):
        failures = [t for t in texts if isinstance(t, _Failed)]
        if not failures:
            return texts
        clean_failed = isinstance(texts[0], _Failed)
        if self.settings.failure_mode == "closed" or clean_failed:
            first = texts[0] if clean_failed else failures[0]
            which = "the unperturbed sample" if clean_failed else f"sample {first.index}"
            raise SampleFailure(
                f"{len(failures)} of {len(texts)} MLLM calls failed "
                f"(failure_mode={self.settings.failure_mode}); {which}: {first.error.message()}",
                first.error.code(),
            )
        return [t for t in texts if not isinstance(t, _Failed)]  # fail open: vote with the rest


class _Failed:
    __slots__ = ("error", "index")

    def __init__(self, index, error):
        self.index, self.error = index, error
