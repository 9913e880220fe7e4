"""Server-side settings of the defense and the per-request options they bound.

One dataclass holds every knob; build/profiles.yaml gives the values per profile and
build/render.py writes them into each Triton model's config `parameters`, from which the
model.py adapters rebuild this object with `DefenseSettings.from_parameters`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from smoothguard.core.certify import YES_NO, normalize_answer_set

NoiseUnit = Literal["normalized", "pixel"]
AudioNoiseUnit = Literal["relative", "absolute"]
Policy = Literal["answer", "monitor", "abstain", "refuse"]
FailureMode = Literal["open", "closed"]

NOISE_UNITS: tuple[str, ...] = ("normalized", "pixel")
AUDIO_NOISE_UNITS: tuple[str, ...] = ("relative", "absolute")
POLICIES: tuple[str, ...] = ("answer", "monitor", "abstain", "refuse")
FAILURE_MODES: tuple[str, ...] = ("open", "closed")
# Settings that are gone, with why: configs rendered or written before still load (the key is
# dropped with a DeprecationWarning) instead of failing a server that used to start.
DEPRECATED_SETTINGS: dict[str, str] = {
    "log_prompts": "it was never read (prompts are never logged; see audit_log)",
}


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
    # A side shorter than this carries nothing to answer about, and 1-pixel sides are where
    # image processors guess the channel axis; a longer/shorter ratio above the aspect limit
    # makes a shortest-edge resize blow a thin strip up to hundreds of megapixels.
    min_image_side: int = 4
    max_image_aspect: float = 32.0
    max_prompt_chars: int = 2048
    # audio (the smoothguard_audio endpoint): sigma is relative to the clip's RMS, so a noisy
    # copy's SNR is -20 log10(sigma) dB whatever the level (smoothguard.core.audio); "absolute"
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
    # certified mode (CERTIFY on smoothguard, docs/certified.md): Cohen et al.'s selection and
    # estimation draws and alpha. A certify request makes 1 + both copies (the clean one
    # included), bounded by certify_max_draws instead of num_samples_max.
    allow_certify: bool = True
    certify_selection_draws: int = 10
    certify_estimation_draws: int = 100
    certify_alpha: float = 0.001
    certify_max_draws: int = 256
    # logging
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
        if self.min_image_side < 1 or not self.max_image_aspect >= 1.0:
            raise ValueError("min_image_side must be >= 1 and max_image_aspect >= 1")
        if self.certify_selection_draws < 1 or self.certify_estimation_draws < 1:
            raise ValueError("certify_selection_draws and certify_estimation_draws must be >= 1")
        if not 0.0 < self.certify_alpha < 1.0:
            raise ValueError(f"certify_alpha must lie in (0, 1), got {self.certify_alpha}")
        if self.certify_draws > self.certify_max_draws:
            raise ValueError(
                f"1 + certify_selection_draws + certify_estimation_draws = {self.certify_draws} "
                f"is over certify_max_draws {self.certify_max_draws}"
            )

    @property
    def certify_draws(self) -> int:
        """Copies a certify request makes: the clean one (kept so ORIGINAL_TEXT still means
        something; it takes no part in the certificate), then selection, then estimation."""
        return 1 + self.certify_selection_draws + self.certify_estimation_draws

    @classmethod
    def from_profile(cls, section: Mapping[str, Any]) -> DefenseSettings:
        """Build from a profile's `defense` section (build/profiles.yaml), whose older copies
        may still name a deprecated setting."""
        return cls(**_without_deprecated(section))

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> DefenseSettings:
        """Build from string-valued Triton config parameters; unknown keys go to `extra`."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, raw in _without_deprecated(params).items():
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
    # Certified mode (Cohen et al.'s CERTIFY): num_samples is then the server's certify_draws,
    # and answer_set the closed answers the prompt fixes (lower-cased words).
    certify: bool = False
    answer_set: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Passed between ensemble steps as one string tensor. The certify keys are written
        only for certify requests, so every other request's OPTIONS (and with them the
        tickets and the response cache's keys) stay what they were before certified mode."""
        import json

        data = dataclasses.asdict(self)
        if not self.certify:
            for key in _CERTIFY_KINDS:
                del data[key]
        else:
            data["answer_set"] = list(self.answer_set)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(
        cls, text: str | bytes, settings: DefenseSettings | None = None
    ) -> RequestOptions:
        """The strict inverse of to_json (see parse_options), bounded by `settings`."""
        return parse_options(text, settings or DefenseSettings())[0]


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
    certify: bool | None = None,
    answer_set: Sequence[str] | None = None,
) -> RequestOptions:
    """Apply server defaults and reject out-of-range values with InvalidRequest.

    A certify request draws exactly the server's certify_draws copies: NUM_SAMPLES may be left
    out or name that number (anything else is refused rather than silently replaced, since it
    sets the request's cost); ADAPTIVE=true is refused (the bound counts every draw), and the
    server's adaptive default does not apply; POLICY is not used (the certificate decides).
    """
    import math

    if sigma is None:
        sigma = settings.sigma
    if not math.isfinite(sigma) or not 0.0 <= sigma <= settings.sigma_max:
        raise InvalidRequest(
            f"SIGMA must be a finite number in [0, {settings.sigma_max}], got {sigma}"
        )
    words: tuple[str, ...] = ()
    if certify:
        if not settings.allow_certify:
            raise InvalidRequest("CERTIFY is refused by this server (allow_certify=false)")
        if adaptive:
            raise InvalidRequest(
                "ADAPTIVE cannot be combined with CERTIFY: certify needs every draw"
            )
        adaptive = False
        if num_samples is not None and num_samples != settings.certify_draws:
            raise InvalidRequest(
                f"NUM_SAMPLES must be left out with CERTIFY, or be {settings.certify_draws} "
                f"(1 + certify_selection_draws + certify_estimation_draws), got {num_samples}"
            )
        num_samples = settings.certify_draws
        if not sigma > 0:
            raise InvalidRequest("SIGMA must be above 0 with CERTIFY (no noise, no certificate)")
        try:
            words = normalize_answer_set(YES_NO if answer_set is None else answer_set)
        except ValueError as exc:
            raise InvalidRequest(f"ANSWER_SET {exc}") from exc
    elif answer_set is not None:
        raise InvalidRequest("ANSWER_SET is only used with CERTIFY=true")
    if num_samples is None:
        num_samples = settings.num_samples
    limit = settings.certify_max_draws if certify else settings.num_samples_max
    if not 1 <= num_samples <= limit:
        raise InvalidRequest(f"NUM_SAMPLES must be in [1, {limit}], got {num_samples}")
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
        certify=bool(certify),
        answer_set=words,
    )


def _without_deprecated(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` less the DEPRECATED_SETTINGS keys, each dropped with a DeprecationWarning."""
    for key in settings.keys() & DEPRECATED_SETTINGS.keys():
        warnings.warn(
            f"setting {key!r} is deprecated and ignored: {DEPRECATED_SETTINGS[key]}; remove it",
            DeprecationWarning,
            stacklevel=3,  # the caller of from_parameters / from_profile
        )
    return {k: v for k, v in settings.items() if k not in DEPRECATED_SETTINGS}


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


# OPTIONS as the noise step writes it is ~200 bytes; the cap keeps a hostile string from costing
# more than a glance (and JSON nesting from reaching the parser's recursion limit).
OPTIONS_MAX_BYTES = 4096
# JSON type of each RequestOptions field, as named in refusals.
_OPTION_KINDS: dict[str, str] = {
    "sigma": "a number",
    "num_samples": "an integer",
    "seed": "an integer or null",
    "max_new_tokens": "an integer",
    "policy": "a string",
    "return_candidates": "a boolean",
    "adaptive": "a boolean",
}
# Keys present only in a certify request's OPTIONS (see RequestOptions.to_json).
_CERTIFY_KINDS: dict[str, str] = {
    "certify": "a boolean",
    "answer_set": "a list of words",
}
_INT64_MAX = 2**63 - 1


def parse_options(
    raw: object,
    settings: DefenseSettings,
    *,
    extra_keys: tuple[str, ...] = (),
    sigma_max: float | None = None,
) -> tuple[RequestOptions, dict[str, Any]]:
    """OPTIONS (the JSON the noise step writes for later steps), checked as if a stranger wrote it.

    The steps after noise are public Triton models too, so their OPTIONS input is hostile
    input: it must be one JSON object of at most OPTIONS_MAX_BYTES with exactly the
    RequestOptions keys (plus `extra_keys`, returned unchecked for the caller), each of its JSON
    type and inside the server's limits, the same limits resolve_options applies to a request.
    Duplicate keys and the non-standard NaN/Infinity literals are refused. `sigma_max` widens
    the sigma bound for a step shared by modalities (aggregate). Every refusal is an
    InvalidRequest naming OPTIONS and the key.
    """
    import json
    import math

    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"OPTIONS is not valid UTF-8 (byte {exc.start})") from exc
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidRequest(f"OPTIONS must be a JSON string, got {type(raw).__name__}")
    if len(text.encode("utf-8")) > OPTIONS_MAX_BYTES:
        raise InvalidRequest(f"OPTIONS is longer than {OPTIONS_MAX_BYTES} bytes")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise InvalidRequest(f"OPTIONS has key {key!r} twice")
            seen[key] = value
        return seen

    def constant(name: str) -> Any:
        raise InvalidRequest(f"OPTIONS contains {name}, which is not JSON")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise InvalidRequest(f"OPTIONS is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"OPTIONS must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_OPTION_KINDS) - set(_CERTIFY_KINDS) - set(extra_keys))
    if unknown:
        raise InvalidRequest(f"OPTIONS has unknown key(s): {', '.join(map(repr, unknown))}")
    missing = [k for k in _OPTION_KINDS if k not in data]
    if missing:
        raise InvalidRequest(f"OPTIONS lacks key(s): {', '.join(map(repr, missing))}")

    def bad(key: str, what: str) -> InvalidRequest:
        shown = repr(data[key])
        return InvalidRequest(f"OPTIONS key {key!r} must be {what}, got {shown[:40]}")

    def integer(key: str, lo: int, hi: int) -> int:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(key, _OPTION_KINDS[key])
        if not lo <= value <= hi:
            raise bad(key, f"an integer in [{lo}, {hi}]")
        return value

    def boolean(key: str) -> bool:
        if not isinstance(data[key], bool):
            raise bad(key, "a boolean")
        return data[key]

    limit = settings.sigma_max if sigma_max is None else sigma_max
    sigma = data["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise bad("sigma", "a number")
    # Compared before any float(): a JSON integer of 400 digits overflows a float conversion.
    if (isinstance(sigma, float) and not math.isfinite(sigma)) or not 0.0 <= sigma <= limit:
        raise bad("sigma", f"a finite number in [0, {limit}]")
    seed = data["seed"]
    if seed is not None:
        if not settings.allow_seed:
            raise bad("seed", "null: this server refuses seeds (allow_seed=false)")
        seed = integer("seed", 0, _INT64_MAX)
    policy = data["policy"]
    if policy not in POLICIES:
        raise bad("policy", f"one of {', '.join(POLICIES)}")
    adaptive = boolean("adaptive")
    certify = "certify" in data and boolean("certify")
    answer_set: tuple[str, ...] = ()
    if not certify:
        if "answer_set" in data:
            raise bad("answer_set", "absent: it is only for certify requests")
        num_samples = integer("num_samples", 1, settings.num_samples_max)
    else:
        if not settings.allow_certify:
            raise bad("certify", "false: this server refuses certify (allow_certify=false)")
        if adaptive:
            raise bad("adaptive", "false with certify: certify needs every draw")
        num_samples = integer("num_samples", 1, settings.certify_max_draws)
        if num_samples != settings.certify_draws:
            raise bad("num_samples", f"{settings.certify_draws} with certify (certify_draws)")
        if not sigma > 0:
            raise bad("sigma", "above 0 with certify")
        if "answer_set" not in data:
            raise InvalidRequest("OPTIONS lacks key(s): 'answer_set' (certify requests carry it)")
        words = data["answer_set"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise bad("answer_set", _CERTIFY_KINDS["answer_set"])
        try:
            answer_set = normalize_answer_set(words)
        except ValueError as exc:
            raise InvalidRequest(f"OPTIONS key 'answer_set' {exc}") from exc
        if list(answer_set) != words:
            raise bad("answer_set", "lower-case words without spaces, as the noise step writes")
    options = RequestOptions(
        sigma=float(sigma),
        num_samples=num_samples,
        seed=seed,
        max_new_tokens=integer("max_new_tokens", 1, settings.max_new_tokens_limit),
        policy=policy,
        return_candidates=boolean("return_candidates"),
        adaptive=adaptive,
        certify=certify,
        answer_set=answer_set,
    )
    return options, {k: data[k] for k in extra_keys if k in data}
