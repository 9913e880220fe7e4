"""wait_until_ready: both clients poll health() the same way, to readiness or to a deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

import smoothguard_client.client as client_module
from smoothguard_client import AsyncSmoothGuardClient, SmoothGuardClient, SmoothGuardError


class Loading:
    """A transport whose models turn ready after `polls` health probes, or that always fails."""

    def __init__(self, polls: int, code: str | None = None) -> None:
        self.polls, self.code, self.probes = polls, code, 0

    def answer(self, method: str) -> Any:
        if self.code is not None:
            raise InferenceServerException(msg="down", status=f"StatusCode.{self.code}")
        if method == "is_server_live":
            self.probes += 1
        if method == "get_server_metadata":
            return type("Meta", (), {"name": "triton", "version": "2.51.0"})()
        return method != "is_model_ready" or self.probes > self.polls

    def __getattr__(self, method: str) -> Any:
        return lambda **kwargs: self.answer(method)

    def close(self) -> None:
        pass


class AsyncLoading(Loading):
    def __getattr__(self, method: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            return self.answer(method)

        return call

    async def close(self) -> None:
        pass


class Clock:
    """Stands in for time.monotonic and both sleeps, so waits take no real time."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(client_module.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(client_module.time, "sleep", fake.sleep)
    monkeypatch.setattr(client_module.asyncio, "sleep", fake.async_sleep)
    return fake


def wait_sync(transport: Loading, **wait: float) -> dict[str, Any]:
    client = SmoothGuardClient("127.0.0.1:1", retries=0)
    client.close()
    client._triton = transport  # type: ignore[assignment]
    return client.wait_until_ready(**wait)


def wait_async(transport: Loading, **wait: float) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with AsyncSmoothGuardClient("127.0.0.1:1", retries=0) as client:
            client._triton = transport  # type: ignore[assignment]
            return await client.wait_until_ready(**wait)

    return asyncio.run(scenario())


BOTH_CLIENTS = pytest.mark.parametrize(
    ("wait", "transport"), [(wait_sync, Loading), (wait_async, AsyncLoading)]
)


@BOTH_CLIENTS
def test_polls_until_every_model_is_ready(clock: Clock, wait: Any, transport: Any) -> None:
    health = wait(transport(polls=2), timeout_s=10.0, poll_s=1.0)
    assert health["ready"] and clock.sleeps == [1.0, 1.0]


@BOTH_CLIENTS
def test_deadline_names_what_was_missing(clock: Clock, wait: Any, transport: Any) -> None:
    with pytest.raises(SmoothGuardError, match=r"DEADLINE_EXCEEDED: 127\.0\.0\.1:1 not ready"):
        wait(transport(polls=100), timeout_s=2.5, poll_s=1.0)
    assert clock.sleeps == [1.0, 1.0]
    with pytest.raises(SmoothGuardError, match=r"DEADLINE_EXCEEDED: 127\.0\.0\.1:1 down"):
        wait(transport(polls=0, code="UNAVAILABLE"), timeout_s=2.5, poll_s=1.0)


@BOTH_CLIENTS
def test_errors_that_waiting_cannot_fix_end_the_wait(
    clock: Clock, wait: Any, transport: Any
) -> None:
    with pytest.raises(SmoothGuardError) as info:
        wait(transport(polls=0, code="PERMISSION_DENIED"), timeout_s=10.0, poll_s=1.0)
    assert info.value.status == "PERMISSION_DENIED" and clock.sleeps == []
