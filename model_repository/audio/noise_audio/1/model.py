"""Triton adapter for step 1 of smoothguard_audio (validate, fit to the model's window, make N
noisy waveforms), the audio twin of noise/1/model.py. Sigma is relative to the clip's RMS by
default (defense.audio_noise_unit; see smoothguard.core.audio)."""

from smoothguard.core.audio import AudioPreprocessor, audio_from_inputs, noisy_copies
from smoothguard.core.noise import make_rng
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.xp import get_xp
from smoothguard_triton.dlpack import output_tensor
from smoothguard_triton.glue import (
    bytes_tensor,
    limit_threads,
    model_parameters,
    optional_input,
    request_options,
    request_prompt,
    respond_each,
)
from smoothguard_triton.metrics import EnsembleTickets


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        # The request's SIGMA is bounded by audio_sigma_max and defaults to audio_sigma.
        self.settings = DefenseSettings.from_parameters(params).for_audio()
        self.fit = AudioPreprocessor.load(
            params["audio_mllm_path"], max_seconds=self.settings.max_audio_seconds
        )
        self.xp = get_xp(params.get("device", "auto"))
        self.tickets = EnsembleTickets()  # see noise/1/model.py

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        s = self.settings
        request_prompt(request, s)  # first: a missing PROMPT is refused by name
        options = request_options(request, s)
        if options.certify:  # only if a config ever declared CERTIFY here; Triton refuses it
            raise InvalidRequest(
                "CERTIFY is not offered for audio: smoothguard_audio has no certified mode"
            )
        waveform, rate = audio_from_inputs(
            optional_input(request, "AUDIO"),
            optional_input(request, "AUDIO_BYTES"),
            optional_input(request, "SAMPLE_RATE"),
            max_bytes=s.max_audio_bytes,
        )
        clip = self.fit(waveform, rate)
        copies = noisy_copies(
            self.xp.asarray(clip),
            num_samples=options.num_samples,
            sigma=options.sigma,
            unit=s.audio_noise_unit,
            clip=s.clip,
            rng=make_rng(self.xp, options.seed),
        )
        return [
            output_tensor("AUDIO_VALUES", copies),
            bytes_tensor("OPTIONS", [self.tickets.issue(options)]),
        ]
