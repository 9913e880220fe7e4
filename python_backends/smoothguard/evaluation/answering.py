"""Where an evaluation's answers come from: the defense in this process, or the served endpoint
once it is known to add noise in the evaluation's unit; asked in seeded chunks so that the
figures reproduce."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.core.settings import DefenseSettings
from smoothguard.evaluation.answerers import Answer, Answerer, InProcessAnswerer, ServedAnswerer
from smoothguard.evaluation.config import EvalConfig


def in_process_answerer(config: EvalConfig, model: Any) -> InProcessAnswerer:
    """The defense as the server runs it, with the evaluation's noise unit and budget."""
    from smoothguard.adapters.embedder import SentenceEncoder

    settings = DefenseSettings(max_new_tokens=config.max_new_tokens, noise_unit=config.noise_unit)
    return InProcessAnswerer(
        model,
        SentenceEncoder(config.encoder),
        settings,
        config.max_new_tokens,
        config.batch_size,
        denoise=copy_denoiser(config, model),
    )


def copy_denoiser(config: Any, model: Any) -> Any | None:
    """The configured denoiser in the model's normalised space (None without one)."""
    if getattr(config, "denoiser", None) is None:
        return None
    from smoothguard.adapters.denoise_copies import CopyDenoiser

    return CopyDenoiser.load(config.denoiser, model.image_mean, model.image_std)


class ServedMismatch(ValueError):
    """The served defense is not the one the evaluation was asked to measure."""


def served_answerer(
    config: Any,
    log: Callable[[str], None] = print,
    *,
    modality: str = "image",
    unit: str | None = None,
) -> ServedAnswerer:
    """The served endpoints, once their noise unit is known to be the evaluation's (`unit`,
    by default the image config's noise_unit): sigma means something else in another unit
    (3.7x the noise in pixels for CLIP's statistics), and the EOT attacks draw the defense's
    noise in the evaluation's unit."""
    from smoothguard_client import SmoothGuardError

    expected = config.noise_unit if unit is None else unit
    key = "noise_unit" if modality == "image" else f"{modality}_noise_unit"
    answerer = ServedAnswerer(
        config.served or "",
        config.max_new_tokens,
        modality=modality,
        concurrency=config.concurrency,
        root_certificates=config.root_certificates,
        headers=dict(config.headers),
    )
    try:
        params = answerer.client.defense_parameters()
    except SmoothGuardError as exc:
        log(
            f"could not read the server's {key} ({exc.status}: {exc.message}); "
            f"taking it to be {expected}, as this evaluation's, on trust"
        )
        return answerer
    if params.get("allow_seed", "true").lower() == "false":
        answerer.seeded = False
        log("the server refuses seeds (allow_seed false): defended answers are drawn unseeded")
    if modality == "image":
        _check_denoise_step(config, answerer, log)
    served_unit = params.get(key)
    if served_unit and served_unit != expected:
        hint = f"pass --noise-unit {served_unit} or " if modality == "image" else ""
        raise ServedMismatch(
            f"the server at {config.served} adds {modality} noise in {served_unit} units, "
            f"this evaluation in {expected}; {hint}serve with defense.{key} {expected}"
        )
    return answerer


def _check_denoise_step(config: Any, answerer: ServedAnswerer, log: Callable[[str], None]) -> None:
    """A denoiser in the evaluation means a denoise step on the server, and none means none:
    otherwise the EOT attacks would target another defense than the one answering."""
    from smoothguard_client import SmoothGuardError

    try:
        served = "denoise" in answerer.client.defense_steps()
    except SmoothGuardError as exc:
        log(f"could not read the server's steps ({exc.status}); taking its denoiser on trust")
        return
    wanted = getattr(config, "denoiser", None) is not None
    if served != wanted:
        raise ServedMismatch(
            f"the server at {config.served} "
            + (
                "has a denoise step; pass --denoiser with its checkpoint"
                if served
                else "has no denoise step; serve with denoiser.model_path set"
            )
        )


def collect_answers(
    answerer: Answerer,
    images: np.ndarray,
    items: Sequence[Any],
    config: EvalConfig,
    *,
    mode: str,
    sigma: float | None = None,
    num_samples: int | None = None,
    desc: str = "",
) -> list[Answer]:
    """Answers in chunks, with a progress bar; defended ones seeded per item (config.seed), so
    every evaluation of the same images draws the same noise and the figures reproduce."""
    prompts = [it.prompt for it in items]
    out: list[Answer] = []
    chunk = config.batch_size
    with tqdm(total=len(items), desc=desc, unit="item", leave=False) as bar:
        for lo in range(0, len(items), chunk):
            hi = lo + chunk
            if mode != "undefended":
                seeds = [config.seed * 1_000_003 + i for i in range(lo, min(hi, len(items)))]
                out += answerer.defended(
                    images[lo:hi],
                    prompts[lo:hi],
                    seeds=seeds,
                    sigma=config.sigma if sigma is None else sigma,
                    num_samples=config.num_samples if num_samples is None else num_samples,
                    adaptive=mode == "adaptive",
                )
            else:
                out += answerer.undefended(images[lo:hi], prompts[lo:hi])
            bar.update(min(hi, len(items)) - lo)
    return out
