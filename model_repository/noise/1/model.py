"""Triton adapter for step 1 of smoothguard (validate, preprocess, make N noisy inputs).

On GPU (device "gpu", or "auto" with CuPy and a device) the copies are drawn by CuPy on the
device and leave by DLPack, so the N images never pass through host memory; on CPU it is
NumPy, unchanged.
"""

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.core.noise import make_rng, noisy_copies
from smoothguard.core.settings import DefenseSettings
from smoothguard.core.validation import image_from_inputs
from smoothguard.core.xp import get_xp
from smoothguard_triton.dlpack import output_tensor
from smoothguard_triton.glue import (
    bytes_tensor,
    image_size_parameter,
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
        self.settings = DefenseSettings.from_parameters(params)
        self.preprocess = _load_preprocessor(params)
        self.xp = get_xp(params.get("device", "auto"))
        # OPTIONS leave this step with a ticket that marks them as the ensemble's own.
        self.tickets = EnsembleTickets()

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        s = self.settings
        # PROMPT is optional in the configs only so that a request without one reaches this
        # line and is refused by name (the ensemble would otherwise wait for it forever).
        request_prompt(request, s)
        options = request_options(request, s)
        image = image_from_inputs(
            optional_input(request, "IMAGE"),
            optional_input(request, "IMAGE_BYTES"),
            max_pixels=s.max_image_pixels,
            max_bytes=s.max_image_bytes,
            min_side=s.min_image_side,
            max_aspect=s.max_image_aspect,
        )
        pixel_values = self.xp.asarray(self.preprocess([image])[0])
        # num_samples: the request's N, or for CERTIFY the server's 1 + n0 + n (copy 0 clean).
        copies = noisy_copies(
            pixel_values,
            num_samples=options.num_samples,
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


def _load_preprocessor(params):
    """The model's own processor; for processors without a fixed resolution (Qwen2.5-VL) a
    resize to mllm.image_size."""
    return ImagePreprocessor.load(params["mllm_path"], image_size_parameter(params))
