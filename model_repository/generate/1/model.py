"""Triton adapter for step 2 of smoothguard: the noisy copies sent to the MLLM by BLS, so its
batcher groups them with other users' requests; with adaptive sampling a first round of a few
copies, and the rest only when they disagree (smoothguard_triton.fanout makes the calls)."""

import asyncio
import functools

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import read_image_input_spec
from smoothguard.core.adaptive import first_round
from smoothguard.core.audio import AudioPreprocessor, audio_value_bound
from smoothguard.core.noise import CopyStream, make_rng, noise_value_bound
from smoothguard.core.sampling import Sampling, SamplingError
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.validation import check_finite_bounded, check_pixel_values
from smoothguard_triton.fanout import MllmFanout, drawn_rows
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
        # The copies' tensor name, the same here and at the MLLM: PIXEL_VALUES for images,
        # AUDIO for the audio endpoint (generate_audio, same code).
        self.samples_input = params.get("samples_input", "PIXEL_VALUES")
        if self.samples_input not in SAMPLE_CHECKS:
            raise ValueError(f"samples_input must be one of {sorted(SAMPLE_CHECKS)}")
        settings = DefenseSettings.from_parameters(params)
        # OPTIONS bound sigma in the unit of the modality, as the noise step did.
        self.settings = settings.for_audio() if self.samples_input == "AUDIO" else settings
        self._check_samples = SAMPLE_CHECKS[self.samples_input](params, self.settings)
        self.fanout = MllmFanout(params)
        # The noise step ships an adaptive request's first round only; the rest, when the
        # first round disagrees, is drawn here (images only).
        self.rest_here = params.get("adaptive_first_round_only", "false") == "true"
        if self.rest_here and self.samples_input != "PIXEL_VALUES":
            raise ValueError("adaptive_first_round_only is for image copies (PIXEL_VALUES)")
        self.initial = self.settings.adaptive_initial
        if self.rest_here:
            self.spec = read_image_input_spec(params["mllm_path"], image_size_parameter(params))

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
            if n not in self._rows_expected(options):
                raise InvalidRequest(
                    f"{self.samples_input} has {n} rows but OPTIONS num_samples is "
                    f"{options.num_samples}: the noise step makes one row per sample"
                    + (" (an adaptive request's first round only)" if self.rest_here else "")
                )
            self._check_samples(samples.as_numpy())
            # The rounds (adaptive sampling) and the failure mode are the core's; this step
            # only makes the MLLM calls each round asks for.
            sampling = Sampling.for_request(options, self.settings)
            for indices in sampling:
                rows = (
                    functools.partial(self._copies, samples)
                    if indices.stop <= n
                    else self._rest(samples, indices, options)
                )
                sampling.record(await self.fanout.ask(rows, indices, prompt, options))
            texts = sampling.answers()
        except SamplingError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.message, exc.code))
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return error_response(exc)
        return pb_utils.InferenceResponse([bytes_tensor("CANDIDATES", texts, (len(texts), 1))])

    def _rows_expected(self, options):
        """All N, or where the noise step ships first rounds, an adaptive request's first."""
        n = options.num_samples
        if not self.rest_here:
            return (n,)
        return (n, first_round(n, adaptive=options.adaptive, initial=self.initial))

    def _rest(self, samples, indices, options):
        """Copies past the first round, drawn here from the clean copy 0 as the noise step
        would have drawn them (a seeded request replays its first round's draws first, so
        its copies are the ones a full draw makes)."""
        stream = CopyStream(
            samples.as_numpy()[0],
            num_samples=options.num_samples,
            sigma=options.sigma,
            unit=self.settings.noise_unit,
            clip=self.settings.clip,
            mean=self.spec.mean,
            std=self.spec.std,
            rng=make_rng(np, options.seed),
        )
        stream.skip_to(indices.start, replay=options.seed is not None)
        return drawn_rows(self.samples_input, stream.take(indices), indices.start)

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
