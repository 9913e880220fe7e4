"""Retry policy: which calls and which gRPC statuses are retried, and how long it waits."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import smoothguard_client.client as client_module
from smoothguard_client import RetryPolicy, SmoothGuardClient, SmoothGuardError

PIXELS = np.zeros((4, 4, 3), np.uint8)


def error(code: str) -> InferenceServerException:
    return InferenceServerException(msg="boom", status=f"StatusCode.{code}")


class Flaky:
    """A transport that fails `failures` times with `code`, then answers every read."""

    def __init__(self, code: str, failures: int) -> None:
        self.code, self.failures, self.calls = code, failures, []

    def __getattr__(self, method: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append(method)
            if self.failures:
                self.failures -= 1
                raise error(self.code)
            if method == "get_server_metadata":
                return type("Meta", (), {"name": "triton", "version": "2.51.0"})()
            return True

        return call

    def close(self) -> None:
        pass


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", recorded.append)
    return recorded


def client_with(fake: Flaky, policy: RetryPolicy) -> SmoothGuardClient:
    client = SmoothGuardClient("127.0.0.1:1", retry=policy)
    client.close()
    client._triton = fake  # type: ignore[assignment]
    return client


def test_status_codes_are_configurable(sleeps: list[float]) -> None:
    policy = RetryPolicy(retries=3, backoff_s=0.1, retry_on=frozenset({"StatusCode.INTERNAL"}))
    assert policy.retry_on == {"INTERNAL"} and policy.attempts == 4
    fake = Flaky("INTERNAL", 2)
    assert client_with(fake, policy).health()["ready"]
    assert sleeps == [0.1, 0.2]
    # UNAVAILABLE is no longer on the list: one attempt, then the error.
    with pytest.raises(SmoothGuardError) as info:
        client_with(Flaky("UNAVAILABLE", 1), policy).health()
    assert info.value.status == "UNAVAILABLE"


def test_inference_can_be_excluded_while_reads_are_still_retried(sleeps: list[float]) -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.1, retry_inference=False)
    fake = Flaky("UNAVAILABLE", 1)
    with pytest.raises(SmoothGuardError):
        client_with(fake, policy).ask(PIXELS, "q", seed=1)
    assert fake.calls == ["infer"] and sleeps == []
    assert client_with(Flaky("UNAVAILABLE", 1), policy).health()["live"]
    assert sleeps == [0.1]


def test_jitter_shortens_delays_within_bounds() -> None:
    policy = RetryPolicy(retries=50, backoff_s=1.0, max_backoff_s=4.0, jitter=0.5)
    down = SmoothGuardError("UNAVAILABLE", "down")
    delays = [policy.delay_s(a, down) for a in range(50)]
    assert all(d is not None and 0.5 <= d <= 4.0 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 5, "jitter must vary the delays"
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)


def test_each_retry_is_logged(sleeps: list[float], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smoothguard_client")
    client_with(Flaky("UNAVAILABLE", 2), RetryPolicy(retries=2, backoff_s=0.1)).health()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("retrying in" in m for m in messages)
