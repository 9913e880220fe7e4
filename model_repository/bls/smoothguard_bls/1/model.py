"""Triton adapter for the defended endpoint as one model: intake and noise as the noise step,
the MLLM rounds as the generate step (smoothguard_triton.fanout), the sentence encoder over
BLS, and the vote as the aggregate step (smoothguard_triton.verdict); one stub instead of
three hops through the ensemble, and each round's copies drawn only when it is asked."""

import asyncio

import triton_python_backend_utils as pb_utils

from smoothguard.core.noise import CopyStream, make_rng
from smoothguard.core.sampling import Sampling, SamplingError
from smoothguard.core.settings import DefenseSettings
from smoothguard.core.xp import get_xp, to_numpy
from smoothguard_triton.fanout import MllmFanout, drawn_rows
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    limit_threads,
    model_parameters,
    required_input,
)
from smoothguard_triton.intake import image_request, load_preprocessor
from smoothguard_triton.verdict import Verdict


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        self.preprocess = load_preprocessor(params)
        self.xp = get_xp(params.get("device", "auto"))
        self.fanout = MllmFanout(params)
        self.embedder = params["embedder_model"]
        self.verdict = Verdict(params, self.settings, self.xp)

    def finalize(self):
        self.verdict.close()

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        try:
            s = self.settings
            _, options, pixel_values = image_request(request, s, self.preprocess, self.xp)
            prompt = required_input(request, "PROMPT").reshape(1, 1)  # checked: as sent
            copies = CopyStream(
                pixel_values,
                num_samples=options.num_samples,
                sigma=options.sigma,
                unit=s.noise_unit,
                clip=s.clip,
                mean=self.preprocess.mean,
                std=self.preprocess.std,
                rng=make_rng(self.xp, options.seed),
            )
            sampling = Sampling.for_request(options, s)
            for indices in sampling:
                rows = drawn_rows("PIXEL_VALUES", copies.take(indices), indices.start)
                sampling.record(await self.fanout.ask(rows, indices, prompt, options))
            texts = sampling.answers()
            embeddings = await self._embed(texts)
            outputs = self.verdict.outputs(
                options, texts, embeddings, request_id=request.request_id(), defended=True
            )
        except SamplingError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.message, exc.code))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_response(exc)
        return pb_utils.InferenceResponse(output_tensors=outputs)

    async def _embed(self, texts):
        response = await pb_utils.InferenceRequest(
            model_name=self.embedder,
            requested_output_names=["EMBEDDING"],
            inputs=[bytes_tensor("TEXT", texts, (len(texts), 1))],
        ).async_exec()
        if response.has_error():
            error = response.error()
            raise SamplingError(f"{self.embedder}: {error.message()}", error.code())
        embedding = pb_utils.get_output_tensor_by_name(response, "EMBEDDING")
        return to_numpy(embedding.as_numpy())
