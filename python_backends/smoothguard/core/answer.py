"""A defended answer and the vote behind it: one class whether the in-process pipeline made it
or the client decoded it from the served endpoint, so evaluation code reads both the same way.

The client re-exports it (smoothguard_client.DefendedAnswer) with the one error type it raises,
which lives here because decoding a malformed response raises it. Pure Python and NumPy: the
client may import this module without pulling in anything server-side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

# Only a server that could not be reached is worth asking again; anything else (bad input,
# a model error, a deadline already spent) would fail the same way a second time.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})

# Status names the client itself uses where there is no gRPC status to report.
INVALID_RESPONSE = "INVALID_RESPONSE"
UNKNOWN = "UNKNOWN"

# `model` of an answer made by smoothguard.core.pipeline rather than a served endpoint.
IN_PROCESS = "in-process"


class SmoothGuardError(Exception):
    """A failed call, named by its gRPC status so callers can branch on it."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def is_retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES

    @property
    def is_invalid_argument(self) -> bool:
        return self.status == "INVALID_ARGUMENT"

    @classmethod
    def from_exception(cls, exc: BaseException) -> SmoothGuardError:
        """Wrap a tritonclient InferenceServerException (status like 'StatusCode.UNAVAILABLE')."""
        if isinstance(exc, SmoothGuardError):
            return exc
        status_of = getattr(exc, "status", None)
        message_of = getattr(exc, "message", None)
        status = status_of() if callable(status_of) else None
        message = message_of() if callable(message_of) else None
        status = str(status).removeprefix("StatusCode.") if status else UNKNOWN
        return cls(status, str(message) if message else str(exc))


class _InferResult(Protocol):
    def as_numpy(self, name: str) -> np.ndarray | None: ...


def _output(result: _InferResult, name: str) -> np.ndarray:
    value = result.as_numpy(name)
    if value is None:
        raise SmoothGuardError(INVALID_RESPONSE, f"response has no output {name}")
    return value


def _scalar(result: _InferResult, name: str) -> Any:
    value = _output(result, name).reshape(-1)
    if value.size != 1:
        raise SmoothGuardError(
            INVALID_RESPONSE, f"output {name} should hold one value, got {value.size}"
        )
    item = value[0]
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item.item()


def _optional_scalar(result: _InferResult, name: str, default: Any) -> Any:
    """An output a newer server adds (None from an older one: the default)."""
    if result.as_numpy(name) is None:
        return default
    return _scalar(result, name)


def _strings(value: np.ndarray | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(
        v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        for v in value.reshape(-1)
    )


@dataclass(frozen=True)
class DefendedAnswer:
    """One defended answer plus the vote behind it, so callers can log or act on the evidence."""

    text: str
    decision: str  # answered | monitored | abstained | refused
    reason: str
    chosen_index: int
    cluster_sizes: tuple[int, int]  # majority, then the rest: they sum to num_samples_used
    agreement: float  # majority share of the samples
    original_outvoted: bool  # the unperturbed answer lost the vote: a likely attack
    tie: bool
    num_samples_used: int  # fewer than asked with adaptive sampling or failing open
    original_text: str  # the answer to the unperturbed image
    candidates: tuple[str, ...]  # all answers when requested; index 0 is the unperturbed one
    latency_s: float = 0.0
    model: str = IN_PROCESS  # the endpoint that answered
    # Certified mode (CERTIFY): the answer is the smoothed model's, constant within this L2
    # radius in pixel units at the model's input resolution, with probability 1 - alpha over
    # the draws (docs/certified.md). False and 0 for every other answer.
    certified: bool = False
    certified_radius: float = 0.0

    @classmethod
    def from_infer_result(
        cls, result: Any, latency_s: float, model: str | None = None
    ) -> DefendedAnswer:
        """Decode a tritonclient InferResult of the smoothguard ensemble."""
        if model is None:
            get_response = getattr(result, "get_response", None)
            response = get_response() if callable(get_response) else None
            model = str(getattr(response, "model_name", "") or "smoothguard")
        sizes = tuple(int(v) for v in _output(result, "CLUSTER_SIZES").reshape(-1))
        if len(sizes) != 2:
            raise SmoothGuardError(
                INVALID_RESPONSE, f"output CLUSTER_SIZES should hold 2 values, got {len(sizes)}"
            )
        return cls(
            text=_scalar(result, "TEXT"),
            decision=_scalar(result, "DECISION"),
            reason=_scalar(result, "REASON"),
            chosen_index=int(_scalar(result, "CHOSEN_INDEX")),
            cluster_sizes=(sizes[0], sizes[1]),
            agreement=float(_scalar(result, "AGREEMENT")),
            original_outvoted=bool(_scalar(result, "ORIGINAL_OUTVOTED")),
            tie=bool(_scalar(result, "TIE")),
            num_samples_used=int(_scalar(result, "NUM_SAMPLES_USED")),
            original_text=_scalar(result, "ORIGINAL_TEXT"),
            candidates=_strings(result.as_numpy("CANDIDATES")),
            latency_s=float(latency_s),
            model=model,
            certified=bool(_optional_scalar(result, "CERTIFIED", False)),
            certified_radius=float(_optional_scalar(result, "CERTIFIED_RADIUS", 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        out = asdict(self)
        out["cluster_sizes"] = list(self.cluster_sizes)
        out["candidates"] = list(self.candidates)
        return out
