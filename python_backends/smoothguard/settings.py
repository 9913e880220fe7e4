"""Server-side settings of the defense and the per-request options they bound.

One dataclass holds every knob; build/profiles.yaml gives the values per profile and
build/render.py writes them into each Triton model's config `parameters`, from which the
model.py adapters rebuild this object with `DefenseSettings.from_parameters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

NoiseUnit = Literal["normalized", "pixel"]
AudioNoiseUnit = Literal["relative", "absolute"]
Policy = Literal["answer", "monitor", "abstain", "refuse"]
FailureMode = Literal["open", "closed"]

NOISE_UNITS: tuple[str, ...] = ("normalized", "pixel")
AUDIO_NOISE_UNITS: tuple[str, ...] = ("relative", "absolute")
POLICIES: tuple[str, ...] = ("answer", "monitor", "abstain", "refuse")
FAILURE_MODES: tuple[str, ...] = ("open", "closed")


class InvalidRequest(ValueError):
    """A request the server must reject with INVALID_ARGUMENT; the message names the problem."""


@dataclass(frozen=True)
class DefenseSettings:
    """Defaults and hard limits; a request may choose values inside the limits only."""

    # noise
    sigma: float = 0.15
    sigma_max: float = 1.0
    num_samples: int = 10
    num_samples_max: int = 64
    noise_unit: NoiseUnit = "normalized"
    clip: bool = True
    allow_seed: bool = True
    adaptive: bool = False
    adaptive_initial: int = 4
    # generation
    max_new_tokens: int = 32
    max_new_tokens_limit: int = 128
    # input limits
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 16 * 1024 * 1024
    max_prompt_chars: int = 2048
    # audio (the smoothguard_audio endpoint): sigma is relative to the clip's RMS, so a noisy
    # copy's SNR is -20 log10(sigma) dB whatever the level (smoothguard.audio); "absolute"
    # states it in full-scale amplitude instead
    audio_sigma: float = 0.25
    audio_sigma_max: float = 2.0
    audio_noise_unit: AudioNoiseUnit = "relative"
    max_audio_seconds: float = 30.0
    max_audio_bytes: int = 16 * 1024 * 1024
    # decision
    policy: Policy = "answer"
    min_agreement: float = 0.6
    refusal_text: str = "I can't answer that reliably for this image."
    abstain_text: str = ""
    failure_mode: FailureMode = "closed"
    # logging
    log_prompts: bool = False
    audit_log: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.noise_unit not in NOISE_UNITS:
            raise ValueError(f"noise_unit must be one of {NOISE_UNITS}, got {self.noise_unit!r}")
        if self.audio_noise_unit not in AUDIO_NOISE_UNITS:
            raise ValueError(
                f"audio_noise_unit must be one of {AUDIO_NOISE_UNITS}, "
                f"got {self.audio_noise_unit!r}"
            )
        if not 0.0 <= self.audio_sigma <= self.audio_sigma_max:
            raise ValueError(f"default audio_sigma {self.audio_sigma} outside [0, audio_sigma_max]")
        if self.max_audio_seconds <= 0 or self.max_audio_bytes <= 0:
            raise ValueError("max_audio_seconds and max_audio_bytes must be positive")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.failure_mode not in FAILURE_MODES:
            raise ValueError(
                f"failure_mode must be one of {FAILURE_MODES}, got {self.failure_mode!r}"
            )
        if not 0.0 <= self.sigma <= self.sigma_max:
            raise ValueError(f"default sigma {self.sigma} outside [0, {self.sigma_max}]")
        if not 1 <= self.num_samples <= self.num_samples_max:
            raise ValueError(f"default num_samples {self.num_samples} outside [1, max]")
        if not 1 <= self.max_new_tokens <= self.max_new_tokens_limit:
            raise ValueError("default max_new_tokens outside [1, max_new_tokens_limit]")
        if self.adaptive_initial < 2:
            raise ValueError("adaptive_initial must be at least 2 (the clean copy and one noisy)")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError("min_agreement must lie in [0, 1]")

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> DefenseSettings:
        """Build from string-valued Triton config parameters; unknown keys go to `extra`."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, raw in params.items():
            if key not in known:
                extra[key] = str(raw)
                continue
            default = getattr(cls, key) if hasattr(cls, key) else None
            values[key] = _coerce(key, raw, type(default))
        return cls(**values, extra=extra)

    def for_audio(self) -> DefenseSettings:
        """The same settings with audio's sigma default and limit in place of the image's, so
        resolve_options bounds a request's SIGMA in the unit of the modality it came with."""
        return dataclasses.replace(self, sigma=self.audio_sigma, sigma_max=self.audio_sigma_max)

    def to_parameters(self) -> dict[str, str]:
        """The inverse of from_parameters, as Triton wants them: every value a string."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class RequestOptions:
    """Per-request options after defaults are applied and limits enforced."""

    sigma: float
    num_samples: int
    seed: int | None
    max_new_tokens: int
    policy: Policy
    return_candidates: bool
    adaptive: bool = False

    def to_json(self) -> str:
        """Passed between ensemble steps as one string tensor."""
        import json

        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RequestOptions:
        import json

        return cls(**json.loads(text))


def resolve_options(
    settings: DefenseSettings,
    *,
    sigma: float | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    policy: str | None = None,
    return_candidates: bool | None = None,
    adaptive: bool | None = None,
) -> RequestOptions:
    """Apply server defaults and reject out-of-range values with InvalidRequest."""
    import math

    if sigma is None:
        sigma = settings.sigma
    if not math.isfinite(sigma) or not 0.0 <= sigma <= settings.sigma_max:
        raise InvalidRequest(
            f"SIGMA must be a finite number in [0, {settings.sigma_max}], got {sigma}"
        )
    if num_samples is None:
        num_samples = settings.num_samples
    if not 1 <= num_samples <= settings.num_samples_max:
        raise InvalidRequest(
            f"NUM_SAMPLES must be in [1, {settings.num_samples_max}], got {num_samples}"
        )
    if seed is not None:
        if not settings.allow_seed:
            raise InvalidRequest("SEED is refused by this server (allow_seed=false)")
        if seed < 0:
            raise InvalidRequest(f"SEED must be non-negative, got {seed}")
    if max_new_tokens is None:
        max_new_tokens = settings.max_new_tokens
    if not 1 <= max_new_tokens <= settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"MAX_NEW_TOKENS must be in [1, {settings.max_new_tokens_limit}], got {max_new_tokens}"
        )
    if policy is None or policy == "":
        policy = settings.policy
    if policy not in POLICIES:
        raise InvalidRequest(f"POLICY must be one of {', '.join(POLICIES)}, got {policy!r}")
    if return_candidates is None:
        return_candidates = False
    return RequestOptions(
        sigma=float(sigma),
        num_samples=int(num_samples),
        seed=None if seed is None else int(seed),
        max_new_tokens=int(max_new_tokens),
        policy=policy,  # type: ignore[arg-type]
        return_candidates=bool(return_candidates),
        adaptive=settings.adaptive if adaptive is None else bool(adaptive),
    )


def _coerce(key: str, raw: Any, kind: type) -> Any:
    text = str(raw).strip()
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"setting {key}: expected a boolean, got {raw!r}")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text
