"""Triton adapter for the multimodal LLM: every row of every batched request in one generate()
call per max_new_tokens value, so Triton's dynamic batcher really batches. The same code serves
mllm (parameter modality "image") and mllm_audio ("audio", a link to this file); only how a
request's rows are read and which model class loads differ (MODALITIES below)."""

from collections import defaultdict

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.audio import AudioPreprocessor, audio_from_inputs, audio_value_bound
from smoothguard.core.noise import noise_value_bound
from smoothguard.core.settings import DefenseSettings, InvalidRequest, resolve_options
from smoothguard.core.validation import check_image_array, check_pixel_values, decode_prompt
from smoothguard_triton.glue import (
    bytes_tensor,
    error_response,
    image_size_parameter,
    limit_threads,
    model_parameters,
    optional_input,
    required_input,
)
from smoothguard_triton.threads import sibling_threads


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        # Profiles say cpu/gpu; torch says cpu/cuda (the gpu profile's HF fallback, gpu_check).
        device = "cuda" if params.get("device", "cpu") == "gpu" else "cpu"
        modality = params.get("modality", "image")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
        load, self._rows = MODALITIES[modality]
        self.model = load(params["model_path"], device=device, params=params)
        self._siblings = sibling_threads(
            args["model_name"],
            args["model_instance_name"],
            threads=int(params.get("threads", "0") or 0),
            threads_alone=int(params.get("threads_alone", "0") or 0),
            min_rows=int(params.get("threads_alone_min_rows", "1") or 1),
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = defaultdict(list)  # max_new_tokens -> [(request index, values, prompts)]
        for index, request in enumerate(requests):
            try:
                values, prompts, max_new_tokens = self._parse(request)
                groups[max_new_tokens].append((index, values, prompts))
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                responses[index] = error_response(exc)
        for max_new_tokens, members in groups.items():
            try:
                values = np.concatenate([m[1] for m in members])
                prompts = [p for m in members for p in m[2]]
                with self._siblings.batch(len(prompts)):
                    texts = self.model.generate(values, prompts, max_new_tokens=max_new_tokens)
            except Exception as exc:  # noqa: BLE001
                for index, _, _ in members:
                    responses[index] = error_response(exc)
                continue
            start = 0
            for index, _, member_prompts in members:
                rows = texts[start : start + len(member_prompts)]
                start += len(member_prompts)
                responses[index] = pb_utils.InferenceResponse(
                    [bytes_tensor("TEXT", rows, (len(rows), 1))]
                )
        return responses

    def finalize(self):
        self._siblings.close()

    def _parse(self, request):
        s = self.settings
        values = self._rows(self.model, request, s)
        raw_prompts = required_input(request, "PROMPT").reshape(-1)
        if raw_prompts.size != values.shape[0]:
            raise InvalidRequest("PROMPT must have one row per input row")
        prompts = [decode_prompt(p, max_chars=s.max_prompt_chars) for p in raw_prompts]
        raw_tokens = optional_input(request, "MAX_NEW_TOKENS")
        if raw_tokens is not None and raw_tokens.size != values.shape[0]:
            raise InvalidRequest("MAX_NEW_TOKENS must have one row per input row")
        tokens = None if raw_tokens is None else {int(t) for t in raw_tokens.reshape(-1)}
        if tokens is not None and len(tokens) != 1:
            raise InvalidRequest("MAX_NEW_TOKENS must be the same for every row of a request")
        options = resolve_options(s, max_new_tokens=None if tokens is None else tokens.pop())
        return values, prompts, options.max_new_tokens


def _image_rows(model, request, settings):
    """IMAGE (raw uint8, preprocessed here) or PIXEL_VALUES (as the noise step makes them)."""
    image = optional_input(request, "IMAGE")
    pixel_values = optional_input(request, "PIXEL_VALUES")
    if (image is None) == (pixel_values is None):
        raise InvalidRequest("send exactly one of IMAGE or PIXEL_VALUES")
    if image is not None:
        rows = [
            check_image_array(
                img,
                max_pixels=settings.max_image_pixels,
                min_side=settings.min_image_side,
                max_aspect=settings.max_image_aspect,
            )
            for img in image
        ]
        return model.preprocess(rows).numpy()
    # Values far outside what the noise step can make (e.g. 1e30) are no image: refused, not
    # answered with whatever the model makes of them.
    bound = noise_value_bound(
        model.image_mean, model.image_std, sigma_max=settings.sigma_max, unit=settings.noise_unit
    )
    return check_pixel_values(pixel_values, image_size=model.image_size, max_abs=bound)


def _audio_rows(model, request, settings):
    """AUDIO [B, T] float32 at SAMPLE_RATE (default the model's) or AUDIO_BYTES [B, 1] WAV
    files, each fitted to the model's window."""
    audio = optional_input(request, "AUDIO")
    wavs = optional_input(request, "AUDIO_BYTES")
    rates = optional_input(request, "SAMPLE_RATE")
    rows = len(audio) if audio is not None else 0 if wavs is None else len(wavs)
    if rates is not None and rates.size != rows:
        raise InvalidRequest("SAMPLE_RATE must have one row per AUDIO row")
    fit = AudioPreprocessor(
        model.sample_rate,
        model.num_samples,
        max_seconds=settings.max_audio_seconds,
        # generate_audio sends noisy copies, which may pass full scale when clip is off
        max_abs=audio_value_bound(settings.audio_sigma_max),
    )
    clips = []
    for i in range(rows):
        clip, rate = audio_from_inputs(
            None if audio is None else audio[i],
            None if wavs is None else wavs[i],
            None if rates is None else rates[i],
            max_bytes=settings.max_audio_bytes,
        )
        clips.append(fit(clip, rate))
    if not clips:
        raise InvalidRequest("send exactly one of AUDIO (float32 [T]) or AUDIO_BYTES (PCM WAV)")
    return np.stack(clips)


def _load_image_model(path, device, params):
    import torch

    return VisionLanguageModel.load(
        path,
        device=device,
        dtype=getattr(torch, params.get("dtype", "float32")),
        image_size=image_size_parameter(params),
    )


def _load_audio_model(path, device, params):
    from smoothguard.synthetic.synthalm.model import AudioLanguageModel

    return AudioLanguageModel.load(path, device=device)


# modality -> (load the model, read a request's rows as the model's input values)
MODALITIES = {
    "image": (_load_image_model, _image_rows),
    "audio": (_load_audio_model, _audio_rows),
}
