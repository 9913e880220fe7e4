"""Sync and asyncio clients for the SmoothGuard Triton endpoint (gRPC).

Both clients share everything except the act of waiting: requests are described once as
`_Call`s (method, arguments, how to decode the answer) by `_ClientBase`, and each client only
runs them, with the same retry policy, blocking or awaiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from smoothguard_client.audio import AudioLike, load_audio
from smoothguard_client.images import ImageLike, load_image
from smoothguard_client.result import DefendedAnswer, SmoothGuardError

DEFAULT_URL = "localhost:8001"
DEFAULT_MODEL = "smoothguard"
DEFAULT_AUDIO_MODEL = "smoothguard_audio"
POLICIES = ("answer", "monitor", "abstain", "refuse")
# The steps of the ensemble; health() reports each so a broken step is named, not guessed.
PIPELINE_MODELS = ("noise", "generate", "aggregate")
EMBED_BATCH_SIZE = 64  # within the embedder's max_batch_size (64 or more in every profile)

InferInput = grpcclient.InferInput
log = logging.getLogger("smoothguard_client")


# ---------------------------------------------------------------- input builders (shared)


def _bytes_input(name: str, values: Sequence[str | bytes], shape: Sequence[int]) -> InferInput:
    array = np.array(
        [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values], dtype=np.object_
    ).reshape(shape)
    item = InferInput(name, list(array.shape), "BYTES")
    item.set_data_from_numpy(array)
    return item


def _array_input(name: str, array: np.ndarray, wire: str) -> InferInput:
    item = InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def _check_text(name: str, value: object) -> str | bytes:
    if not isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _int_array(name: str, value: object, dtype: type[np.integer], shape: Sequence[int]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    info = np.iinfo(dtype)
    if not info.min <= int(value) <= info.max:
        raise ValueError(f"{name} must fit in {np.dtype(dtype).name}, got {value}")
    return np.full(shape, int(value), dtype=dtype)


def _float_array(name: str, value: object, shape: Sequence[int]) -> np.ndarray:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return np.full(shape, float(value), dtype=np.float32)


def build_option_inputs(
    prompt: str,
    *,
    sigma: float | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    policy: str | None = None,
    return_candidates: bool = False,
    adaptive: bool | None = None,
    certify: bool = False,
    answer_set: Sequence[str] | None = None,
) -> list[InferInput]:
    """PROMPT and the defense options both endpoints take; unset ones are left out so the
    server decides. `certify` and `answer_set` are smoothguard's certified mode (images)."""
    inputs = [_bytes_input("PROMPT", [_check_text("prompt", prompt)], [1])]
    if sigma is not None:
        inputs.append(_array_input("SIGMA", _float_array("sigma", sigma, [1]), "FP32"))
    if num_samples is not None:
        array = _int_array("num_samples", num_samples, np.int32, [1])
        inputs.append(_array_input("NUM_SAMPLES", array, "INT32"))
    if seed is not None:
        inputs.append(_array_input("SEED", _int_array("seed", seed, np.int64, [1]), "INT64"))
    if max_new_tokens is not None:
        array = _int_array("max_new_tokens", max_new_tokens, np.int32, [1])
        inputs.append(_array_input("MAX_NEW_TOKENS", array, "INT32"))
    if policy is not None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        inputs.append(_bytes_input("POLICY", [policy], [1]))
    if return_candidates:
        inputs.append(_array_input("RETURN_CANDIDATES", np.array([True]), "BOOL"))
    if adaptive is not None:
        inputs.append(_array_input("ADAPTIVE", np.array([bool(adaptive)]), "BOOL"))
    if certify:
        inputs.append(_array_input("CERTIFY", np.array([True]), "BOOL"))
    if answer_set is not None:
        if not certify:
            raise ValueError("answer_set only applies with certify=True")
        if isinstance(answer_set, str | bytes):  # "yes,no" would be sent as one answer
            raise TypeError("answer_set must be a sequence of answers, not one string")
        words = [_check_text("answer_set[]", a) for a in answer_set]
        inputs.append(_bytes_input("ANSWER_SET", words, [len(words)]))
    return inputs


def build_ask_inputs(image: ImageLike, prompt: str, **options: Any) -> list[InferInput]:
    """Inputs for the smoothguard ensemble (options: see build_option_inputs)."""
    payload = load_image(image)
    if payload.encoded is not None:
        inputs = [_bytes_input("IMAGE_BYTES", [payload.encoded], [1])]
    else:
        assert payload.array is not None
        inputs = [_array_input("IMAGE", payload.array, "UINT8")]
    return inputs + build_option_inputs(prompt, **options)


def _audio_inputs(audio: AudioLike, sample_rate: int | None, batch: bool) -> list[InferInput]:
    """AUDIO_BYTES, or AUDIO (+ SAMPLE_RATE); `batch` adds the leading batch dimension of one
    that the bare mllm_audio (a batching model) wants."""
    payload = load_audio(audio, sample_rate)
    lead = [1] if batch else []
    if payload.encoded is not None:
        return [_bytes_input("AUDIO_BYTES", [payload.encoded], [*lead, 1])]
    assert payload.array is not None
    samples = payload.array[np.newaxis] if batch else payload.array
    inputs = [_array_input("AUDIO", samples, "FP32")]
    if payload.sample_rate is not None:
        rate = _int_array("sample_rate", payload.sample_rate, np.int32, [*lead, 1])
        inputs.append(_array_input("SAMPLE_RATE", rate, "INT32"))
    return inputs


def build_ask_audio_inputs(
    audio: AudioLike, prompt: str, *, sample_rate: int | None = None, **options: Any
) -> list[InferInput]:
    """Inputs for the smoothguard_audio ensemble: a WAV file (path or bytes) or float32 samples
    with their sample_rate (options: see build_option_inputs; certified mode is for images)."""
    if options.get("certify") or options.get("answer_set") is not None:
        raise ValueError("certify is for images (smoothguard); smoothguard_audio has none")
    return _audio_inputs(audio, sample_rate, batch=False) + build_option_inputs(prompt, **options)


def _undefended_text_inputs(prompt: str, max_new_tokens: int | None) -> list[InferInput]:
    inputs = [_bytes_input("PROMPT", [_check_text("prompt", prompt)], [1, 1])]
    if max_new_tokens is not None:
        array = _int_array("max_new_tokens", max_new_tokens, np.int32, [1, 1])
        inputs.append(_array_input("MAX_NEW_TOKENS", array, "INT32"))
    return inputs


def build_undefended_inputs(
    image: ImageLike, prompt: str, *, max_new_tokens: int | None = None
) -> list[InferInput]:
    """Inputs for the bare mllm (batch of one); it takes raw pixels only, so decode here."""
    array = load_image(image).to_array()
    return [
        _array_input("IMAGE", array[np.newaxis], "UINT8"),
        *_undefended_text_inputs(prompt, max_new_tokens),
    ]


def build_embed_inputs(texts: Sequence[str]) -> list[InferInput]:
    """One embedder batch: TEXT [b, 1]."""
    if not texts:
        raise ValueError("texts is empty")
    values = [_check_text("texts[]", t) for t in texts]
    return [_bytes_input("TEXT", values, [len(values), 1])]


def _text_batches(texts: str | Sequence[str], batch_size: int) -> list[list[str]]:
    items = [texts] if isinstance(texts, str) else list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _stack_embeddings(parts: Sequence[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)


# ---------------------------------------------------------------- retries (shared)


DEFAULT_RETRY_ON = frozenset({"UNAVAILABLE"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for calls that are safe to repeat.

    Which calls: health, readiness and metadata always (pure reads). Inference too, unless
    `retry_inference=False`: the server keeps no state per request, so a repeated call has no
    effect beyond its cost; a seeded request gets the identical answer, an unseeded one fresh
    noise, which is fine because the failed attempt's answer was never delivered.
    Which errors: by default only UNAVAILABLE (connection refused or reset, server starting or
    stopping), where the server did not run the request. DEADLINE_EXCEEDED is not retried by
    default: the server may still be working on it, and repeating adds load to a slow server.
    Delays: `backoff_s * 2**attempt`, capped at `max_backoff_s`, then scaled by a random factor
    in [1 - jitter, 1] so that clients cut off together do not come back together.
    """

    retries: int = 2  # attempts = retries + 1
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    retry_on: frozenset[str] = DEFAULT_RETRY_ON  # gRPC status names, e.g. "UNAVAILABLE"
    retry_inference: bool = True
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {self.jitter}")
        codes = {str(c).removeprefix("StatusCode.").upper() for c in self.retry_on}
        object.__setattr__(self, "retry_on", frozenset(codes))

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay_s(
        self, attempt: int, error: SmoothGuardError, *, idempotent: bool = True
    ) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (0-based), or None to give up."""
        if attempt >= self.retries or error.status not in self.retry_on:
            return None
        if not idempotent and not self.retry_inference:
            return None
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if self.jitter:
            delay *= 1.0 - self.jitter * random.random()
        return delay


@dataclass(frozen=True)
class _Call:
    """One RPC on the tritonclient client, and what to make of its answer."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    decode: Callable[[Any], Any] = lambda response: response
    # Called with a non-retryable error instead of raising it (None: raise).
    on_error: Callable[[SmoothGuardError], Any] | None = None
    # Reads are always safe to repeat; inference follows RetryPolicy.retry_inference.
    idempotent: bool = True


def _not_ready(error: SmoothGuardError) -> bool:
    if error.is_retryable:
        raise error
    return False


class _Attempts:
    """One call's way through its RetryPolicy, so that the sync and async drivers differ only in
    how they call and how they wait."""

    def __init__(self, policy: RetryPolicy, call: _Call) -> None:
        self._policy, self._call, self._attempt = policy, call, 0

    def delay_after(self, exc: InferenceServerException) -> float | None:
        """Seconds to wait before trying again, or None when the policy gives up."""
        error = SmoothGuardError.from_exception(exc)
        delay = self._policy.delay_s(self._attempt, error, idempotent=self._call.idempotent)
        if delay is not None:
            # One warning per retry, so operators see a flapping server in client logs.
            log.warning(
                "%s failed (attempt %d): %s; retrying in %.2f s",
                self._call.method,
                self._attempt + 1,
                error,
                delay,
            )
            self._attempt += 1
        return delay

    def give_up(self, exc: InferenceServerException) -> Any:
        """The call's fallback for its last failure (on_error), or that failure raised."""
        error = SmoothGuardError.from_exception(exc)
        if self._call.on_error is not None:
            return self._call.on_error(error)
        raise error from exc


class _ReadinessWait:
    """wait_until_ready's deadline and verdicts, so both clients only probe and sleep."""

    def __init__(self, url: str, timeout_s: float, poll_s: float) -> None:
        self._url, self._poll_s = url, poll_s
        self._deadline = time.monotonic() + timeout_s

    def ready(self, outcome: dict[str, Any] | SmoothGuardError) -> dict[str, Any] | None:
        """health()'s answer once it says ready, None to poll again; raises when waiting cannot
        help: a non-retryable error, or no time left for another poll (DEADLINE_EXCEEDED)."""
        if isinstance(outcome, SmoothGuardError):
            if not outcome.is_retryable:
                raise outcome
            detail = outcome.message
        elif outcome["ready"]:
            return outcome
        else:
            detail = f"not ready: {outcome['models']}"
        if time.monotonic() + self._poll_s > self._deadline:
            raise SmoothGuardError("DEADLINE_EXCEEDED", f"{self._url} {detail}")
        return None


def _normalize_url(url: str, ssl: bool) -> tuple[str, bool]:
    if url.startswith("grpcs://"):
        return url.removeprefix("grpcs://"), True
    return url.removeprefix("grpc://"), ssl


class _ClientBase:
    """Configuration and request/answer shapes common to both clients."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = DEFAULT_MODEL,
        undefended_model: str = "mllm",
        audio_model: str = DEFAULT_AUDIO_MODEL,
        undefended_audio_model: str = "mllm_audio",
        embedder_model: str = "embedder",
        timeout_s: float | None = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        retry: RetryPolicy | None = None,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        headers: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive (or None for no limit), got {timeout_s}")
        self.url, ssl = _normalize_url(url, ssl)
        self.model = model
        self.undefended_model = undefended_model
        self.audio_model = audio_model
        self.undefended_audio_model = undefended_audio_model
        self.embedder_model = embedder_model
        self.timeout_s = timeout_s
        # `retry` (full control: status codes, jitter, inference) wins over the three shorthands.
        self.retry = retry or RetryPolicy(retries, backoff_s, max_backoff_s)
        self.headers = dict(headers) if headers else None
        self._connection: dict[str, Any] = {
            "url": self.url,
            "verbose": verbose,
            "ssl": ssl,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r})"

    @property
    def health_models(self) -> list[str]:
        names = [self.model, *PIPELINE_MODELS, self.embedder_model, self.undefended_model]
        return list(dict.fromkeys(names))

    def _common(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s, "headers": self.headers}

    def _ask_call(
        self, model: str, build: Callable[[], list[InferInput]], request_id: str | None
    ) -> _Call:
        started = time.perf_counter()
        inputs = build()

        def decode(result: Any) -> DefendedAnswer:
            latency = time.perf_counter() - started
            return DefendedAnswer.from_infer_result(result, latency, model=model)

        kwargs = {"model_name": model, "inputs": inputs, "request_id": request_id or ""}
        return _Call("infer", {**kwargs, **self._common()}, decode, idempotent=False)

    def _image_call(
        self, image: ImageLike, prompt: str, *, request_id: str | None = None, **options: Any
    ) -> _Call:
        return self._ask_call(
            self.model, lambda: build_ask_inputs(image, prompt, **options), request_id
        )

    def _audio_call(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> _Call:
        return self._ask_call(
            self.audio_model,
            lambda: build_ask_audio_inputs(audio, prompt, sample_rate=sample_rate, **options),
            request_id,
        )

    def _undefended_call(
        self, image: ImageLike, prompt: str, *, max_new_tokens: int | None = None
    ) -> _Call:
        inputs = build_undefended_inputs(image, prompt, max_new_tokens=max_new_tokens)
        return self._text_call(self.undefended_model, inputs)

    def _undefended_audio_call(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int | None = None,
    ) -> _Call:
        inputs = _audio_inputs(audio, sample_rate, batch=True)
        inputs += _undefended_text_inputs(prompt, max_new_tokens)
        return self._text_call(self.undefended_audio_model, inputs)

    def _text_call(self, model: str, inputs: list[InferInput]) -> _Call:
        def decode(result: Any) -> str:
            text = result.as_numpy("TEXT")
            if text is None or text.size != 1:
                raise SmoothGuardError("INVALID_RESPONSE", f"{model} answered without one TEXT")
            value = text.reshape(-1)[0]
            return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

        kwargs = {"model_name": model, "inputs": inputs}
        return _Call("infer", {**kwargs, **self._common()}, decode, idempotent=False)

    def _embed_call(self, texts: Sequence[str]) -> _Call:
        def decode(result: Any) -> np.ndarray:
            embedding = result.as_numpy("EMBEDDING")
            if embedding is None or embedding.ndim != 2 or len(embedding) != len(texts):
                raise SmoothGuardError(
                    "INVALID_RESPONSE", f"embedder did not return {len(texts)} embeddings"
                )
            return embedding.astype(np.float32, copy=False)

        kwargs = {"model_name": self.embedder_model, "inputs": build_embed_inputs(texts)}
        return _Call("infer", {**kwargs, **self._common()}, decode, idempotent=False)

    def _parameters_call(self, model: str) -> _Call:
        def decode(response: Any) -> dict[str, str]:
            config = response.get("config", response)
            return {
                k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()
            }

        kwargs = {"model_name": model, "as_json": True, **self._common()}
        return _Call("get_model_config", kwargs, decode)

    def _steps_call(self) -> _Call:
        def decode(response: Any) -> list[str]:
            config = response.get("config", response)
            steps = config.get("ensemble_scheduling", {}).get("step", [])
            return [str(step["model_name"]) for step in steps]

        kwargs = {"model_name": self.model, "as_json": True, **self._common()}
        return _Call("get_model_config", kwargs, decode)

    def _health_calls(self) -> dict[str, _Call]:
        common = self._common()
        calls = {
            "live": _Call("is_server_live", common),
            "server_ready": _Call("is_server_ready", common),
            "metadata": _Call("get_server_metadata", common),
        }
        for name in self.health_models:
            calls[f"model:{name}"] = _Call(
                "is_model_ready", {"model_name": name, **common}, on_error=_not_ready
            )
        return calls

    def _health_from(self, results: Mapping[str, Any]) -> dict[str, Any]:
        models = {
            key.removeprefix("model:"): bool(value)
            for key, value in results.items()
            if key.startswith("model:")
        }
        metadata = results["metadata"]
        return {
            "url": self.url,
            "live": bool(results["live"]),
            "ready": bool(results["server_ready"]) and all(models.values()),
            "server_ready": bool(results["server_ready"]),
            "server": str(getattr(metadata, "name", "")),
            "version": str(getattr(metadata, "version", "")),
            "models": models,
        }


class SmoothGuardClient(_ClientBase):
    """Blocking client; thread-safe for concurrent ask() calls (gRPC channels are)."""

    _triton: grpcclient.InferenceServerClient | None

    def _open(self) -> None:
        self._triton = grpcclient.InferenceServerClient(**self._connection)

    def __enter__(self) -> SmoothGuardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._triton is not None:
            self._triton.close()
            self._triton = None

    def _run(self, call: _Call) -> Any:
        if self._triton is None:
            raise RuntimeError("client is closed")
        method = getattr(self._triton, call.method)
        attempts = _Attempts(self.retry, call)
        while True:
            try:
                response = method(**call.kwargs)
            except InferenceServerException as exc:
                if (delay := attempts.delay_after(exc)) is None:
                    return attempts.give_up(exc)
                time.sleep(delay)
            else:
                return call.decode(response)

    def ask(
        self,
        image: ImageLike,
        prompt: str,
        *,
        sigma: float | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
        policy: str | None = None,
        return_candidates: bool = False,
        adaptive: bool | None = None,
        certify: bool = False,
        answer_set: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> DefendedAnswer:
        """Ask the defended model; latency_s covers the whole call, retries included.

        certify=True answers a closed question by Cohen et al.'s CERTIFY (answer_set: the
        answers the prompt allows, default yes/no): the answer's `certified` and
        `certified_radius` say whether and how far it holds (docs/certified.md)."""
        return self._run(
            self._image_call(
                image,
                prompt,
                sigma=sigma,
                num_samples=num_samples,
                seed=seed,
                max_new_tokens=max_new_tokens,
                policy=policy,
                return_candidates=return_candidates,
                adaptive=adaptive,
                certify=certify,
                answer_set=answer_set,
                request_id=request_id,
            )
        )

    def ask_audio(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> DefendedAnswer:
        """Ask the defended audio endpoint about a WAV file or float32 samples (with their
        sample_rate); options as for ask() (sigma is relative to the clip's RMS there)."""
        return self._run(
            self._audio_call(
                audio, prompt, sample_rate=sample_rate, request_id=request_id, **options
            )
        )

    def ask_undefended(
        self, image: ImageLike, prompt: str, *, max_new_tokens: int | None = None
    ) -> str:
        """The bare model's answer, for comparing against the defended one."""
        return self._run(self._undefended_call(image, prompt, max_new_tokens=max_new_tokens))

    def ask_undefended_audio(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int | None = None,
    ) -> str:
        """The bare audio model's answer (mllm_audio)."""
        call = self._undefended_audio_call(
            audio, prompt, sample_rate=sample_rate, max_new_tokens=max_new_tokens
        )
        return self._run(call)

    def embed(
        self, texts: str | Sequence[str], *, batch_size: int = EMBED_BATCH_SIZE
    ) -> np.ndarray:
        """Embeddings [n, D] float32, in batches the embedder accepts; (0, 0) for no texts."""
        parts = [self._run(self._embed_call(b)) for b in _text_batches(texts, batch_size)]
        return _stack_embeddings(parts)

    def defense_parameters(self) -> dict[str, str]:
        """The deployment's defense settings (sigma, noise_unit, num_samples, limits...) as its
        noise step was configured, so a caller can state results in the server's own units.

        Model configuration is an admin API in the Kubernetes deployment: pass its key in
        `headers` there, or this raises SmoothGuardError (PERMISSION_DENIED / UNAVAILABLE).
        """
        return self._run(self._parameters_call(PIPELINE_MODELS[0]))

    def defense_steps(self) -> list[str]:
        """The models the defended endpoint chains, in order: noise, generate, embedder,
        aggregate, with `denoise` after noise where the deployment does denoised smoothing.
        An admin API in the Kubernetes deployment, as defense_parameters()."""
        return self._run(self._steps_call())

    def health(self) -> dict[str, Any]:
        """live, ready, server_ready, server, version, models {name: ready}.

        Raises SmoothGuardError (UNAVAILABLE) when the server cannot be reached at all.
        """
        return self._health_from({k: self._run(c) for k, c in self._health_calls().items()})

    def wait_until_ready(self, timeout_s: float = 300.0, poll_s: float = 1.0) -> dict[str, Any]:
        """Block until health() says ready (e.g. while models load); DEADLINE_EXCEEDED if not."""
        wait = _ReadinessWait(self.url, timeout_s, poll_s)
        while True:
            outcome: dict[str, Any] | SmoothGuardError
            try:
                outcome = self.health()
            except SmoothGuardError as exc:
                outcome = exc
            if (health := wait.ready(outcome)) is not None:
                return health
            time.sleep(poll_s)


class AsyncSmoothGuardClient(_ClientBase):
    """asyncio client (tritonclient.grpc.aio); create and use it inside one event loop."""

    _triton: aioclient.InferenceServerClient | None

    def _open(self) -> None:
        self._triton = None
        self._closed = False

    async def __aenter__(self) -> AsyncSmoothGuardClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._triton is not None:
            await self._triton.close()
            self._triton = None

    def _client(self) -> aioclient.InferenceServerClient:
        # Made on first use so the grpc.aio channel binds to the running loop.
        if self._closed:
            raise RuntimeError("client is closed")
        if self._triton is None:
            self._triton = aioclient.InferenceServerClient(**self._connection)
        return self._triton

    async def _run(self, call: _Call) -> Any:
        method = getattr(self._client(), call.method)
        attempts = _Attempts(self.retry, call)
        while True:
            try:
                response = await method(**call.kwargs)
            except InferenceServerException as exc:
                if (delay := attempts.delay_after(exc)) is None:
                    return attempts.give_up(exc)
                await asyncio.sleep(delay)
            else:
                return call.decode(response)

    async def ask(
        self,
        image: ImageLike,
        prompt: str,
        *,
        sigma: float | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
        policy: str | None = None,
        return_candidates: bool = False,
        adaptive: bool | None = None,
        certify: bool = False,
        answer_set: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> DefendedAnswer:
        """Ask the defended model; image loading runs in a thread to keep the loop free."""
        call = await asyncio.to_thread(
            self._image_call,
            image,
            prompt,
            sigma=sigma,
            num_samples=num_samples,
            seed=seed,
            max_new_tokens=max_new_tokens,
            policy=policy,
            return_candidates=return_candidates,
            adaptive=adaptive,
            certify=certify,
            answer_set=answer_set,
            request_id=request_id,
        )
        return await self._run(call)

    async def ask_audio(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> DefendedAnswer:
        """SmoothGuardClient.ask_audio, awaited; file reading runs in a thread."""
        call = await asyncio.to_thread(
            self._audio_call,
            audio,
            prompt,
            sample_rate=sample_rate,
            request_id=request_id,
            **options,
        )
        return await self._run(call)

    async def ask_undefended(
        self, image: ImageLike, prompt: str, *, max_new_tokens: int | None = None
    ) -> str:
        """The bare model's answer, for comparing against the defended one."""
        call = await asyncio.to_thread(
            self._undefended_call, image, prompt, max_new_tokens=max_new_tokens
        )
        return await self._run(call)

    async def ask_undefended_audio(
        self,
        audio: AudioLike,
        prompt: str,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int | None = None,
    ) -> str:
        """The bare audio model's answer (mllm_audio)."""
        call = await asyncio.to_thread(
            self._undefended_audio_call,
            audio,
            prompt,
            sample_rate=sample_rate,
            max_new_tokens=max_new_tokens,
        )
        return await self._run(call)

    async def embed(
        self, texts: str | Sequence[str], *, batch_size: int = EMBED_BATCH_SIZE
    ) -> np.ndarray:
        """Embeddings [n, D] float32; batches go out concurrently."""
        batches = _text_batches(texts, batch_size)
        parts = await asyncio.gather(*(self._run(self._embed_call(b)) for b in batches))
        return _stack_embeddings(parts)

    async def defense_parameters(self) -> dict[str, str]:
        """Same as SmoothGuardClient.defense_parameters."""
        return await self._run(self._parameters_call(PIPELINE_MODELS[0]))

    async def defense_steps(self) -> list[str]:
        """Same as SmoothGuardClient.defense_steps."""
        return await self._run(self._steps_call())

    async def health(self) -> dict[str, Any]:
        """Same as SmoothGuardClient.health, with the probes sent concurrently."""
        calls = self._health_calls()
        values = await asyncio.gather(*(self._run(c) for c in calls.values()))
        return self._health_from(dict(zip(calls, values, strict=True)))

    async def wait_until_ready(
        self, timeout_s: float = 300.0, poll_s: float = 1.0
    ) -> dict[str, Any]:
        """Wait until health() says ready; DEADLINE_EXCEEDED if it does not in time."""
        wait = _ReadinessWait(self.url, timeout_s, poll_s)
        while True:
            outcome: dict[str, Any] | SmoothGuardError
            try:
                outcome = await self.health()
            except SmoothGuardError as exc:
                outcome = exc
            if (health := wait.ready(outcome)) is not None:
                return health
            await asyncio.sleep(poll_s)
