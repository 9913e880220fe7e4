"""What the defended endpoint answered, and the one error type the client raises.

Both are defined in smoothguard.core.answer, so an answer from the served endpoint and one from
the in-process pipeline (smoothguard.core.pipeline) are the same class.
"""

from smoothguard.core.answer import (
    INVALID_RESPONSE,
    RETRYABLE_STATUSES,
    UNKNOWN,
    DefendedAnswer,
    SmoothGuardError,
)

__all__ = [
    "INVALID_RESPONSE",
    "RETRYABLE_STATUSES",
    "UNKNOWN",
    "DefendedAnswer",
    "SmoothGuardError",
]
