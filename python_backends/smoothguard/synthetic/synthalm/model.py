"""A local Qwen2-Audio-style checkpoint behind the interface the attacks and evaluation use.

`AudioLanguageModel` mirrors smoothguard.adapters.mllm.VisionLanguageModel (preprocess, generate,
answer_logprob; it reuses that class's prompt/answer tokenisation and padding) with waveforms
in place of pixels. Nothing here is specific to SynthALM: any checkpoint whose processor has a
WhisperFeatureExtractor and whose model takes ``input_features`` + ``feature_attention_mask``
(Qwen2-Audio and relatives) fits. The model's "values" are float32 waveforms [B, T] at the
feature extractor's window (T = n_samples, zero-padded or cut like Whisper does); the log-mel
features are computed here in torch, exactly as WhisperFeatureExtractor's torch path does, so
gradients reach the waveform and PGD can run on raw audio.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.audio import DEFAULT_RMS_FLOOR, AudioNoiseUnit, AudioPreprocessor

_AUDIO_KEYS = frozenset({"input_features", "feature_attention_mask"})


class AudioLanguageModel(VisionLanguageModel):
    """Greedy batched answers and differentiable answer log-likelihoods for one checkpoint."""

    modality = "audio"

    def __init__(
        self,
        processor: Any,
        model: torch.nn.Module,
        device: str = "cpu",
        *,
        noise_unit: AudioNoiseUnit = "relative",
        rms_floor: float = DEFAULT_RMS_FLOOR,
    ) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.tokenizer = processor.tokenizer
        fe = processor.feature_extractor
        self.sample_rate = int(fe.sampling_rate)
        self.num_samples = int(fe.n_samples)
        self.frames = int(fe.nb_max_frames)
        # The served noise step fits clips to the window with this same object.
        self._fit = AudioPreprocessor(self.sample_rate, self.num_samples, max_seconds=1e9)
        self.n_fft, self.hop_length = int(fe.n_fft), int(fe.hop_length)
        self._window = torch.hann_window(self.n_fft).to(device)
        self._mel = torch.from_numpy(np.asarray(fe.mel_filters, np.float32)).T.to(device)
        # How the defense and the EOT attack scale their noise (smoothguard.core.audio).
        self.noise_unit: AudioNoiseUnit = noise_unit
        self.rms_floor = rms_floor
        self._init_text()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> AudioLanguageModel:
        """From a local directory only: never reaches for a hub."""
        from transformers import AutoModelForMultimodalLM, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForMultimodalLM.from_pretrained(
            str(path), dtype=dtype, local_files_only=True
        )
        model = model.to(device).eval()
        model.requires_grad_(False)
        return cls(processor, model, device)

    # -- inputs ------------------------------------------------------------------------------

    def preprocess(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:  # type: ignore[override]
        """float32 mono waveforms -> [B, T] at the model's window (zero-padded or cut)."""
        rows = [self._fit(np.asarray(wave, np.float32)) for wave in waveforms]
        if not rows:
            return torch.zeros((0, self.num_samples), dtype=torch.float32)
        return torch.from_numpy(np.stack(rows))

    def features(self, values: torch.Tensor) -> torch.Tensor:
        """[B, T] waveforms -> [B, mel, frames] Whisper log-mel, differentiable in the waveform."""
        stft = torch.stft(
            values, self.n_fft, self.hop_length, window=self._window, return_complex=True
        )
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._mel @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0

    def chat_text(self, prompt: str) -> str:
        """The prompt in the checkpoint's own chat template, one audio clip first."""
        conversation = [
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": prompt}]}
        ]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def _encode_prompt(self, prompt: str) -> dict[str, tuple[Any, ...]]:
        silence = np.zeros(self.num_samples, np.float32)
        encoded = self.processor(
            text=[self.chat_text(prompt)],
            audio=[silence],
            sampling_rate=self.sample_rate,
            return_tensors="np",
        )
        return {
            key: tuple(np.asarray(value)[0].tolist())
            for key, value in encoded.items()
            if key not in _AUDIO_KEYS
        }

    def _values(self, values: torch.Tensor | np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(values)
        if tensor.ndim != 2 or tensor.shape[1] != self.num_samples:
            raise ValueError(f"waveforms must be [B, {self.num_samples}], got {list(tensor.shape)}")
        return tensor.to(self.device, torch.float32)

    def _audio_inputs(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(values).to(self.model.dtype)
        mask = torch.ones((values.shape[0], self.frames), dtype=torch.long, device=self.device)
        return {"input_features": features, "feature_attention_mask": mask}

    # -- outputs -----------------------------------------------------------------------------

    def generate(  # type: ignore[override]
        self,
        values: torch.Tensor | np.ndarray,
        prompts: str | Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers, one per row (one prompt is broadcast); batched with left padding."""
        waves = self._values(values)
        texts = self._broadcast(prompts, waves.shape[0])
        inputs = self._batch(texts)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                **self._audio_inputs(waves),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    def answer_logprob(  # type: ignore[override]
        self,
        values: torch.Tensor,
        prompts: str | Sequence[str],
        answers: Sequence[str],
    ) -> torch.Tensor:
        """[B] sum of log p(answer tokens, then EOS | audio, prompt); differentiable in audio."""
        waves = self._values(values)
        texts = self._broadcast(prompts, waves.shape[0])
        if len(answers) != waves.shape[0]:
            raise ValueError(f"{len(answers)} answers for {waves.shape[0]} clips")
        answer_rows = [self.answer_ids(t, a) for t, a in zip(texts, answers, strict=True)]
        inputs = self._batch(texts, answer_rows)
        longest = max(len(r) for r in answer_rows)
        logits = self.model(**inputs, **self._audio_inputs(waves)).logits[:, -longest - 1 :]
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = inputs["input_ids"][:, -longest:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        keep = torch.zeros_like(picked)
        for i, row in enumerate(answer_rows):
            keep[i, longest - len(row) :] = 1.0
        return (picked * keep).sum(dim=1)

    def attack_domain(self) -> WaveformDomain:
        """How smoothguard.evaluation.attacks perturbs this model's input (see WaveformDomain)."""
        return WaveformDomain(self)


class WaveformDomain:
    """The attack space for audio: the waveform itself, L-inf bounded in full-scale amplitude.

    `eps` is in the same unit as the samples ([-1, 1] full scale); 0.004 is about -48 dBFS,
    far below the clips' levels. EOT noise is the defense's own: `sigma` relative to the
    clip's RMS (or absolute, following the model's `noise_unit`), clipped to [-1, 1].
    """

    def __init__(self, model: AudioLanguageModel) -> None:
        self.model = model

    def encode(self, inputs: Sequence[np.ndarray]) -> torch.Tensor:
        return self.model.preprocess(list(inputs))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1.0, 1.0)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def noisy(
        self, values: torch.Tensor, samples: int, sigma: float, generator: torch.Generator
    ) -> torch.Tensor:
        """[B, T] -> [samples * B, T], the defense's Gaussian copies (differentiable)."""
        if self.model.noise_unit == "absolute":
            scale = torch.full((values.shape[0], 1), float(sigma))
        else:
            rms = values.pow(2).mean(dim=-1, keepdim=True).sqrt()
            scale = sigma * rms.clamp(min=self.model.rms_floor)
        noise = torch.randn((samples, *values.shape), generator=generator)
        noisy = (values.unsqueeze(0) + noise * scale.unsqueeze(0)).clamp(-1.0, 1.0)
        return noisy.reshape(-1, values.shape[-1])

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().clamp(-1.0, 1.0).numpy().astype(np.float32)
