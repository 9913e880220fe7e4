"""Triton adapter for step 1 of smoothguard (validate, preprocess, make N noisy inputs).

On GPU (device "gpu", or "auto" with CuPy and a device) the copies are drawn by CuPy on the
device and leave by DLPack, so the N images never pass through host memory; on CPU it is
NumPy, unchanged.
"""

from smoothguard.core.adaptive import first_round
from smoothguard.core.noise import make_rng, noisy_copies
from smoothguard.core.settings import DefenseSettings
from smoothguard.core.xp import get_xp
from smoothguard_triton.dlpack import output_tensor
from smoothguard_triton.glue import bytes_tensor, limit_threads, model_parameters, respond_each
from smoothguard_triton.intake import image_request, load_preprocessor
from smoothguard_triton.metrics import EnsembleTickets


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        self.preprocess = load_preprocessor(params)
        self.xp = get_xp(params.get("device", "auto"))
        # OPTIONS leave this step with a ticket that marks them as the ensemble's own.
        self.tickets = EnsembleTickets()
        # An adaptive request's first round only; generate draws the rest if it is asked for.
        self.first_round_only = params.get("adaptive_first_round_only", "false") == "true"

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        s = self.settings
        _, options, pixel_values = image_request(request, s, self.preprocess, self.xp)
        # num_samples: the request's N, or for CERTIFY the server's 1 + n0 + n (copy 0 clean).
        # An adaptive request gets its first round only (where the profile says so): most
        # stop there, and the copies are drawn in order, so the first k of N are these.
        rows = options.num_samples
        if self.first_round_only:
            rows = first_round(rows, adaptive=options.adaptive, initial=s.adaptive_initial)
        copies = noisy_copies(
            pixel_values,
            num_samples=rows,
            sigma=options.sigma,
            unit=s.noise_unit,
            clip=s.clip,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            rng=make_rng(self.xp, options.seed),
        )
        return [
            output_tensor("PIXEL_VALUES", copies),
            bytes_tensor("OPTIONS", [self.tickets.issue(options)]),
        ]
