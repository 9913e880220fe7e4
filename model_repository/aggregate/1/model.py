"""Triton adapter for step 4 of smoothguard: cluster, choose, apply the policy; for a certify
request, Cohen et al.'s CERTIFY on the noisy answers decides instead (docs/certified.md).
The work is smoothguard_triton.verdict's, shared with the single-model endpoint."""

from smoothguard.core.settings import DefenseSettings
from smoothguard.core.validation import DEFAULT_MAX_TEXT_CHARS, check_embeddings, decode_texts
from smoothguard.core.xp import get_xp
from smoothguard_triton.glue import (
    limit_threads,
    model_parameters,
    required_input,
    respond_each,
    step_options,
)
from smoothguard_triton.metrics import EnsembleTickets
from smoothguard_triton.verdict import Verdict


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        # Shared by smoothguard and smoothguard_audio: OPTIONS' sigma is bounded by the larger
        # of the two modalities' limits (this step does not use sigma beyond the audit line).
        self.sigma_max = max(self.settings.sigma_max, self.settings.audio_sigma_max)
        self.verdict = Verdict(params, self.settings, get_xp(params.get("device", "auto")))
        self.tickets = EnsembleTickets()

    def finalize(self):
        self.verdict.close()

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        options, ticket = step_options(request, self.settings, sigma_max=self.sigma_max)
        candidates = decode_texts(
            required_input(request, "CANDIDATES"),
            name="CANDIDATES",
            max_chars=DEFAULT_MAX_TEXT_CHARS,
            max_rows=options.num_samples,  # adaptive sampling or failing open give fewer
        )
        embeddings = check_embeddings(required_input(request, "EMBEDDINGS"), len(candidates))
        return self.verdict.outputs(
            options,
            candidates,
            embeddings,
            request_id=request.request_id(),
            # Only a request that came through an ensemble is a defended request.
            defended=self.tickets.verify(options, ticket),
        )
