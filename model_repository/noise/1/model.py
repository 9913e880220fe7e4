"""Triton adapter for step 1 of smoothguard (validate, preprocess, make N noisy inputs)."""

import triton_python_backend_utils as pb_utils

from smoothguard.noise import make_rng, noisy_copies
from smoothguard.preprocess import ImagePreprocessor
from smoothguard.settings import DefenseSettings, resolve_options
from smoothguard.validation import decode_prompt, image_from_inputs, single_scalar
from smoothguard.xp import get_xp, to_numpy
from smoothguard_triton.glue import (
    bytes_tensor,
    model_parameters,
    optional_input,
    required_input,
    respond_each,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.settings = DefenseSettings.from_parameters(params)
        self.preprocess = ImagePreprocessor.load(params["mllm_path"])
        self.xp = get_xp(params.get("device", "auto"))

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        s = self.settings
        image = image_from_inputs(
            optional_input(request, "IMAGE"),
            optional_input(request, "IMAGE_BYTES"),
            max_pixels=s.max_image_pixels,
            max_bytes=s.max_image_bytes,
        )
        decode_prompt(
            required_input(request, "PROMPT").reshape(-1)[0], max_chars=s.max_prompt_chars
        )
        options = resolve_options(
            s,
            sigma=single_scalar(optional_input(request, "SIGMA"), "SIGMA"),
            num_samples=single_scalar(optional_input(request, "NUM_SAMPLES"), "NUM_SAMPLES"),
            seed=single_scalar(optional_input(request, "SEED"), "SEED"),
            max_new_tokens=single_scalar(
                optional_input(request, "MAX_NEW_TOKENS"), "MAX_NEW_TOKENS"
            ),
            policy=single_scalar(optional_input(request, "POLICY"), "POLICY"),
            return_candidates=single_scalar(
                optional_input(request, "RETURN_CANDIDATES"), "RETURN_CANDIDATES"
            ),
            adaptive=single_scalar(optional_input(request, "ADAPTIVE"), "ADAPTIVE"),
        )
        pixel_values = self.xp.asarray(self.preprocess([image])[0])
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
            pb_utils.Tensor("PIXEL_VALUES", to_numpy(copies)),
            bytes_tensor("OPTIONS", [options.to_json()]),
        ]
