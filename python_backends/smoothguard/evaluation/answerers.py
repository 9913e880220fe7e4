"""Two ways to get undefended and defended answers: in this process, or from the server.

In-process runs the very SmoothGuard code the server runs (noise, vote, policy through
`smoothguard.core.pipeline`); served sends the same images to the `smoothguard` and `mllm`
endpoints over gRPC, so an attack computed once can be replayed against a deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from smoothguard.core.settings import DefenseSettings, resolve_options


@dataclass(frozen=True)
class Answer:
    text: str
    model_calls: int
    original_outvoted: bool = False
    agreement: float = 1.0


class Answerer(Protocol):
    def undefended(self, images: np.ndarray, prompts: Sequence[str]) -> list[Answer]: ...

    def defended(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        *,
        sigma: float,
        num_samples: int,
        seeds: Sequence[int],
        adaptive: bool = False,
    ) -> list[Answer]: ...


class InProcessAnswerer:
    """The local Hugging Face model and sentence encoder behind the shared pipeline."""

    def __init__(
        self,
        model: object,
        encoder: object,
        settings: DefenseSettings,
        max_new_tokens: int,
        batch_size: int = 64,
        denoise: Any | None = None,
    ) -> None:
        from smoothguard.core.pipeline import SmoothGuard

        self.model, self.settings, self.max_new_tokens = model, settings, max_new_tokens
        self.batch_size = batch_size
        self.guard = SmoothGuard(
            generate=lambda pv, prompt, n: model.generate(pv, prompt, max_new_tokens=n),
            embed=encoder.encode,
            image_mean=model.image_mean,
            image_std=model.image_std,
            settings=settings,
            denoise=denoise,
        )

    def with_guard(self, guard: Any) -> InProcessAnswerer:
        """The same model and encoder behind another pipeline (a diagnostic's variant)."""
        other = copy.copy(self)
        other.guard = guard
        return other

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        return self.model.preprocess(list(images)).numpy()

    def undefended(self, images: np.ndarray, prompts: Sequence[str]) -> list[Answer]:
        answers: list[Answer] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            texts = self.model.generate(
                self._pixels(images[start:stop]),
                list(prompts[start:stop]),
                max_new_tokens=self.max_new_tokens,
            )
            answers += [Answer(t, 1) for t in texts]
        return answers

    def defended(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        *,
        sigma: float,
        num_samples: int,
        seeds: Sequence[int],
        adaptive: bool = False,
    ) -> list[Answer]:
        pixels = self._pixels(images)
        answers = []
        for pixel_values, prompt, seed in zip(pixels, prompts, seeds, strict=True):
            options = resolve_options(
                self.settings,
                sigma=sigma,
                num_samples=num_samples,
                seed=seed,
                max_new_tokens=self.max_new_tokens,
                adaptive=adaptive,
            )
            out = self.guard.defend(pixel_values, prompt, options)
            answers.append(
                Answer(out.text, out.num_samples_used, out.original_outvoted, out.agreement)
            )
        return answers


T = TypeVar("T")


class ServedAnswerer:
    """The deployed endpoints, through the project's gRPC client: `smoothguard` and `mllm`
    for images, `smoothguard_audio` and `mllm_audio` for audio (float32 waveforms at the
    model's rate, sent as samples).

    Up to `concurrency` requests are in flight at once, so that the server batches them as it
    would a live load (one at a time, a GPU deployment would sit idle between requests); the
    answers do not depend on it: defended requests carry their own seeds."""

    def __init__(
        self,
        url: str,
        max_new_tokens: int,
        modality: str = "image",
        concurrency: int = 8,
        *,
        root_certificates: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        from smoothguard_client import SmoothGuardClient

        if modality not in ("image", "audio"):
            raise ValueError(f"modality must be 'image' or 'audio', got {modality!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        # A deployment as it runs in production: TLS (a grpcs:// URL or a CA bundle) and
        # metadata such as an auth token or the admin key that opens defense_parameters().
        self.client = SmoothGuardClient(
            url,
            timeout_s=300,
            ssl=root_certificates is not None,
            root_certificates=root_certificates,
            headers=headers or None,
        )
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        # False against a deployment that refuses seeds (defense.allow_seed false): its
        # defended answers are then drawn fresh, and figures vary from run to run.
        self.seeded = True
        audio = modality == "audio"
        self._ask = self.client.ask_audio if audio else self.client.ask
        self._ask_undefended = (
            self.client.ask_undefended_audio if audio else self.client.ask_undefended
        )

    def _each(self, ask: Callable[..., T], *columns: Sequence[Any]) -> list[T]:
        """ask(*row) for every row, `concurrency` at a time, in the rows' order."""
        rows = list(zip(*columns, strict=True))
        if self.concurrency == 1 or len(rows) < 2:
            return [ask(*row) for row in rows]
        with ThreadPoolExecutor(min(self.concurrency, len(rows))) as pool:
            return list(pool.map(lambda row: ask(*row), rows))

    def undefended(self, images: np.ndarray, prompts: Sequence[str]) -> list[Answer]:
        def ask(image: np.ndarray, prompt: str) -> Answer:
            return Answer(
                self._ask_undefended(image, prompt, max_new_tokens=self.max_new_tokens), 1
            )

        return self._each(ask, images, prompts)

    def defended(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        *,
        sigma: float,
        num_samples: int,
        seeds: Sequence[int],
        adaptive: bool = False,
    ) -> list[Answer]:
        def ask(image: np.ndarray, prompt: str, seed: int) -> Answer:
            answer = self._ask(
                image,
                prompt,
                sigma=sigma,
                num_samples=num_samples,
                seed=seed if self.seeded else None,
                max_new_tokens=self.max_new_tokens,
                adaptive=adaptive,
            )
            return Answer(
                answer.text, answer.num_samples_used, answer.original_outvoted, answer.agreement
            )

        return self._each(ask, images, prompts, seeds)
