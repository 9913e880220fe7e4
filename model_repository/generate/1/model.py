"""Triton adapter for step 2 of smoothguard: the noisy copies sent to the MLLM by BLS, so its
batcher groups them with other users' requests; with adaptive sampling a first round of a few
copies, and the rest only when they disagree.

Fan-out `requests` sends one request per copy (what TensorRT-LLM's in-flight batching needs:
one prompt table per request). Fan-out `batch` sends the copies as rows of one request (up to
the MLLM's max_batch_size each): Triton's dynamic batcher on CPU then runs them as one batch
for certain instead of in the few groups that N separate arrivals fall into."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import read_image_input_spec
from smoothguard.core.audio import AudioPreprocessor, audio_value_bound
from smoothguard.core.noise import noise_value_bound
from smoothguard.core.sampling import Failed, Sampling, SamplingError
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.validation import check_finite_bounded, check_pixel_values
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    image_size_parameter,
    limit_threads,
    model_parameters,
    request_prompt,
    required_input,
    required_tensor,
    step_options,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.mllm = params["mllm_model"]
        # The copies' tensor name, the same here and at the MLLM: PIXEL_VALUES for images,
        # AUDIO for the audio endpoint (generate_audio, same code).
        self.samples_input = params.get("samples_input", "PIXEL_VALUES")
        if self.samples_input not in SAMPLE_CHECKS:
            raise ValueError(f"samples_input must be one of {sorted(SAMPLE_CHECKS)}")
        settings = DefenseSettings.from_parameters(params)
        # OPTIONS bound sigma in the unit of the modality, as the noise step did.
        self.settings = settings.for_audio() if self.samples_input == "AUDIO" else settings
        self._check_samples = SAMPLE_CHECKS[self.samples_input](params, self.settings)
        # Upper bound on one round of MLLM calls, so a stuck or overloaded MLLM fails the
        # request with a clear UNAVAILABLE instead of holding it (and this instance) forever.
        timeout = float(params.get("mllm_timeout_s", "0") or 0)
        self.timeout_s = timeout if timeout > 0 else None
        self.fanout = params.get("fanout", "requests")
        if self.fanout not in ("requests", "batch"):
            raise ValueError(f"generate fanout must be 'requests' or 'batch', not {self.fanout!r}")
        self.rows_per_call = (
            int(params.get("mllm_max_batch_size", "1")) if self.fanout == "batch" else 1
        )

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request):
        try:
            # Public like every step: OPTIONS, PROMPT and the copies are checked as a stranger's
            # before one MLLM call is queued.
            options, _ = step_options(request, self.settings)
            if options.certify and self.samples_input == "AUDIO":  # its radius is in pixels
                raise InvalidRequest("OPTIONS key 'certify': smoothguard_audio has no certify")
            request_prompt(request, self.settings)
            prompt = required_input(request, "PROMPT").reshape(1, 1)
            samples = required_tensor(request, self.samples_input)
            n = samples.shape()[0]
            if n != options.num_samples:
                raise InvalidRequest(
                    f"{self.samples_input} has {n} rows but OPTIONS num_samples is "
                    f"{options.num_samples}: the noise step makes exactly one row per sample"
                )
            self._check_samples(samples.as_numpy())
            # The rounds (adaptive sampling) and the failure mode are the core's; this step
            # only makes the MLLM calls each round asks for.
            sampling = Sampling.for_request(options, self.settings)
            for indices in sampling:
                sampling.record(await self._round(samples, indices, prompt, options))
            texts = sampling.answers()
        except SamplingError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.message, exc.code))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_response(exc)
        return pb_utils.InferenceResponse([bytes_tensor("CANDIDATES", texts, (len(texts), 1))])

    async def _round(self, samples, indices, prompt, options):
        """The copies' MLLM calls, all in flight at once; a Failed where a call failed."""
        indices = list(indices)
        groups = [
            indices[lo : lo + self.rows_per_call]
            for lo in range(0, len(indices), self.rows_per_call)
        ]
        calls = [
            asyncio.ensure_future(
                pb_utils.InferenceRequest(
                    model_name=self.mllm,
                    requested_output_names=["TEXT"],
                    inputs=[
                        self._copies(samples, group),
                        pb_utils.Tensor("PROMPT", np.repeat(prompt, len(group), axis=0)),
                        pb_utils.Tensor(
                            "MAX_NEW_TOKENS",
                            np.full((len(group), 1), options.max_new_tokens, dtype=np.int32),
                        ),
                    ],
                ).async_exec()
            )
            for group in groups
        ]
        # asyncio.wait, not wait_for: the BLS futures are left to finish on their own (their
        # answers are dropped), since cancelling them is not supported by the Python backend.
        if not calls:
            return []
        _, pending = await asyncio.wait(calls, timeout=self.timeout_s)
        if pending:
            raise SamplingError(
                f"{len(pending)} of {len(calls)} MLLM calls to {self.mllm!r} gave no answer "
                f"within {self.timeout_s:g} s (generate mllm_timeout_s)",
                pb_utils.TritonError.UNAVAILABLE,
            )
        texts = []
        for group, response in zip(groups, [c.result() for c in calls], strict=True):
            if response.has_error():
                error = response.error()
                texts += [Failed(index, error.message(), error.code()) for index in group]
            else:
                rows = pb_utils.get_output_tensor_by_name(response, "TEXT").as_numpy()
                texts += [t.decode("utf-8", errors="replace") for t in rows.reshape(-1)]
        return texts

    def _copies(self, samples, group):
        """The group's rows as the MLLM's input. All of them: this step's own input tensor,
        which the Python backend hands on from shared memory without a copy (N copies of the
        image are ~0.5 MB at 64x64, far more for a 336-px model); a part is a new tensor."""
        if len(group) == samples.shape()[0]:
            return samples
        return pb_utils.Tensor(self.samples_input, samples.as_numpy()[group[0] : group[-1] + 1])


def _pixel_check(params, settings):
    """PIXEL_VALUES [N, 3, H, W] at the MLLM's resolution and inside its normalised range,
    read from the checkpoint's processor config (the noise step's source of truth too), or
    mllm.image_size for a processor without a fixed resolution."""
    spec = read_image_input_spec(params["mllm_path"], image_size_parameter(params))
    bound = noise_value_bound(
        spec.mean, spec.std, sigma_max=settings.sigma_max, unit=settings.noise_unit
    )

    def check(values):
        check_pixel_values(values, image_size=spec.image_size, max_abs=bound)

    return check


def _audio_check(params, settings):
    """AUDIO [N, T]: T the audio model's window (what noise_audio makes), samples within full
    scale plus the noise the server allows (smoothguard.core.audio.audio_value_bound)."""
    window = AudioPreprocessor.load(params["audio_mllm_path"]).window
    bound = audio_value_bound(settings.audio_sigma_max)  # what mllm_audio accepts too

    def check(values):
        if values.ndim != 2 or values.shape[1] != window:
            raise InvalidRequest(
                f"AUDIO must have shape [N, {window}] (the model's window), "
                f"got {list(values.shape)}"
            )
        check_finite_bounded(values, "AUDIO", bound)

    return check


# samples_input -> (config parameters, settings) -> a check of the copies' array
SAMPLE_CHECKS = {"PIXEL_VALUES": _pixel_check, "AUDIO": _audio_check}
