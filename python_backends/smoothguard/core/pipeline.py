"""SmoothGuard in one process, for evaluation tools that have a model but no Triton server.

Deliberately thin: noise, sampling rounds, voting and policy live in their own modules so this
pipeline and the Triton adapters cannot drift apart. It returns the same DefendedAnswer the
client decodes from the served endpoint (smoothguard.core.answer).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from smoothguard.core.aggregate import select_one
from smoothguard.core.answer import DefendedAnswer
from smoothguard.core.certify import (
    YES_NO,
    Certificate,
    Prediction,
    certify,
    pixel_radius_scale,
    predict,
)
from smoothguard.core.noise import CopyStream, make_rng, pixel_noise_level
from smoothguard.core.policy import decide
from smoothguard.core.sampling import Sampling
from smoothguard.core.settings import DefenseSettings, RequestOptions
from smoothguard.core.xp import array_module, to_numpy

Generate = Callable[[np.ndarray, str, int], list[str]]
Embed = Callable[[list[str]], np.ndarray]
# Noisy copies (normalised [K, 3, H, W]) and the noise level in pixel units -> the copies
# mapped back toward clean images, same space: denoised smoothing's step before generate.
Denoise = Callable[[np.ndarray, float], np.ndarray]

_DEFAULT_SETTINGS = DefenseSettings()


class Copies(Protocol):
    """A request's inputs, a round at a time (CopyStream, or another modality's)."""

    def take(self, indices: range) -> np.ndarray: ...


class DrawnCopies:
    """Copies drawn at once, handed out a round at a time (a modality without a stream)."""

    def __init__(self, copies: np.ndarray) -> None:
        self.copies = copies

    def take(self, indices: range) -> np.ndarray:
        return self.copies[indices.start : indices.stop]


class _Denoised:
    """A stream whose noisy copies (not copy 0) go through the denoiser as they are drawn."""

    def __init__(self, stream: Copies, denoise: Denoise, level: float) -> None:
        self.stream, self.denoise, self.level = stream, denoise, level

    def take(self, indices: range) -> np.ndarray:
        copies = self.stream.take(indices)
        first = 1 if indices.start == 0 else 0
        if len(copies) > first:
            copies[first:] = self.denoise(copies[first:], self.level)
        return copies


class SmoothGuard:
    """noisy copies -> generate -> embed -> vote -> policy, for one image at a time."""

    def __init__(
        self,
        generate: Generate,
        embed: Embed,
        *,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        settings: DefenseSettings = _DEFAULT_SETTINGS,
        denoise: Denoise | None = None,
    ) -> None:
        self.generate = generate
        self.embed = embed
        self.denoise = denoise
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.settings = settings

    def defend(
        self, pixel_values: np.ndarray, prompt: str, options: RequestOptions
    ) -> DefendedAnswer:
        """`pixel_values` is one processor-normalised image ``[3, H, W]``."""
        started = time.perf_counter()
        copies = self.copy_stream(pixel_values, options)
        # The server's rounds and failure mode (generate can only fail as a whole here); each
        # round's copies are drawn when it is asked, so a request adaptive sampling stops
        # early never draws the rest.
        sampling = Sampling.for_request(options, self.settings)
        for indices in sampling:
            chunk = copies.take(indices)
            sampling.record(self._generate(chunk, prompt, options.max_new_tokens))
        texts = sampling.answers()
        n = len(texts)
        embeddings = to_numpy(self.embed(texts))
        if embeddings.shape[0] != n or embeddings.ndim != 2:
            raise RuntimeError(f"embed returned shape {embeddings.shape} for {n} answers")
        empty = np.array([not t.strip() for t in texts], dtype=bool)
        selection = select_one(embeddings, empty=empty)
        decision = decide(selection, texts, options.policy, self.settings)
        return DefendedAnswer(
            text=decision.text,
            decision=decision.decision,
            reason=decision.reason,
            chosen_index=selection.chosen_index,
            cluster_sizes=selection.cluster_sizes,
            agreement=selection.agreement,
            original_outvoted=selection.original_outvoted,
            tie=selection.tie,
            num_samples_used=n,
            original_text=texts[0],
            candidates=tuple(texts),
            latency_s=time.perf_counter() - started,
        )

    def certify(
        self,
        pixel_values: np.ndarray,
        prompt: str,
        options: RequestOptions,
        *,
        selection_draws: int | None = None,
        estimation_draws: int | None = None,
        alpha: float | None = None,
        batch: int = 64,
        classes: Sequence[str] | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY for a closed question about this image, at options.sigma in
        the settings' noise unit; the radius is L2 in pixel units at the model's resolution
        (pixel_radius_scale), as the served endpoint's CERTIFIED_RADIUS. Every draw is noisy:
        the guarantee is about the noise distribution, so the clean copy takes no part. Draws,
        alpha and classes default to the settings' and the options' answer set (else yes/no)."""
        s = self.settings
        n0 = s.certify_selection_draws if selection_draws is None else selection_draws
        n = s.certify_estimation_draws if estimation_draws is None else estimation_draws
        texts = self._noisy_answers(pixel_values, prompt, options, n0 + n, batch)
        return certify(
            texts[:n0],
            texts[n0:],
            sigma=options.sigma * pixel_radius_scale(s.noise_unit, self.image_std),
            alpha=s.certify_alpha if alpha is None else alpha,
            classes=classes or options.answer_set or YES_NO,
        )

    def predict(
        self,
        pixel_values: np.ndarray,
        prompt: str,
        options: RequestOptions,
        *,
        draws: int,
        alpha: float,
        batch: int = 64,
        classes: Sequence[str] | None = None,
    ) -> Prediction:
        """Cohen et al.'s PREDICT for a closed question: the smoothed model's answer at this
        image or abstain, wrong with probability at most alpha; the certified evaluation's
        check of a certificate at an attacked image. All draws noisy, as for certify."""
        texts = self._noisy_answers(pixel_values, prompt, options, draws, batch)
        return predict(texts, alpha=alpha, classes=classes or options.answer_set or YES_NO)

    def _noisy_answers(
        self, pixel_values: np.ndarray, prompt: str, options: RequestOptions, draws: int, batch: int
    ) -> list[str]:
        """Answers to `draws` noisy copies (options.seed's), asked `batch` at a time."""
        wanted = dataclasses.replace(options, num_samples=draws + 1)
        copies = self.noisy_copies(pixel_values, wanted)[1:]  # copy 0 is the clean image
        texts: list[str] = []
        for lo in range(0, draws, batch):
            texts += self._generate(copies[lo : lo + batch], prompt, options.max_new_tokens)
        return texts

    def noisy_copies(self, pixel_values: np.ndarray, options: RequestOptions) -> np.ndarray:
        """The N inputs at once (copy_stream's rounds, all of them)."""
        return self.copy_stream(pixel_values, options).take(range(options.num_samples))

    def copy_stream(self, pixel_values: np.ndarray, options: RequestOptions) -> Copies:
        """The N inputs a round at a time, copy 0 untouched (and, with a denoiser, the others
        denoised); other modalities override this step alone."""
        if pixel_values.ndim != 3:
            raise ValueError(f"pixel_values must be [3, H, W], got shape {pixel_values.shape}")
        stream = CopyStream(
            pixel_values,
            num_samples=options.num_samples,
            sigma=options.sigma,
            unit=self.settings.noise_unit,
            clip=self.settings.clip,
            mean=self.image_mean,
            std=self.image_std,
            rng=make_rng(array_module(pixel_values), options.seed),
        )
        if self.denoise is None:
            return stream
        level = pixel_noise_level(options.sigma, self.settings.noise_unit, self.image_std)
        return _Denoised(stream, self.denoise, level)

    def _generate(self, copies: np.ndarray, prompt: str, max_new_tokens: int) -> list[str]:
        texts = [str(t) for t in self.generate(copies, prompt, max_new_tokens)]
        if len(texts) != len(copies):
            raise RuntimeError(f"generate returned {len(texts)} answers for {len(copies)} images")
        return texts
