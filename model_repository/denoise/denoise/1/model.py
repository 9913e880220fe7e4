"""Triton adapter for denoised smoothing's step between noise and generate: copy 0 (the clean
image) passes untouched, copies 1..N-1 go through the denoiser at the request's noise level."""

import triton_python_backend_utils as pb_utils

from smoothguard.adapters.denoise_copies import CopyDenoiser
from smoothguard.adapters.preprocess import read_image_input_spec
from smoothguard.core.noise import noise_value_bound, pixel_noise_level
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.validation import check_pixel_values
from smoothguard_triton.glue import (
    image_size_parameter,
    limit_threads,
    model_parameters,
    required_input,
    respond_each,
    step_options,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        self.spec = read_image_input_spec(params["mllm_path"], image_size_parameter(params))
        self.bound = noise_value_bound(
            self.spec.mean,
            self.spec.std,
            sigma_max=self.settings.sigma_max,
            unit=self.settings.noise_unit,
        )
        device = "cuda" if params.get("device", "cpu") == "gpu" else "cpu"
        self.denoise = CopyDenoiser.load(
            params["model_path"], self.spec.mean, self.spec.std, device=device
        )

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        # Public like every step: OPTIONS and the copies are checked as a stranger's.
        options, _ = step_options(request, self.settings)
        values = required_input(request, "PIXEL_VALUES")
        check_pixel_values(values, image_size=self.spec.image_size, max_abs=self.bound)
        if values.shape[0] != options.num_samples:
            raise InvalidRequest(
                f"PIXEL_VALUES has {values.shape[0]} rows but OPTIONS num_samples is "
                f"{options.num_samples}: the noise step makes exactly one row per sample"
            )
        out = values.astype("float32", copy=True)
        if len(out) > 1:
            level = pixel_noise_level(options.sigma, self.settings.noise_unit, self.spec.std)
            out[1:] = self.denoise(out[1:], level)
        return [pb_utils.Tensor("PIXEL_VALUES", out)]
