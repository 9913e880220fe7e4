"""The served answerer keeps several requests in flight and the answers in the items' order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from smoothguard.evaluation.answerers import ServedAnswerer

WAIT_S = 30.0  # only reached when the answerer breaks: a bound, never a pause


class _Endpoint:
    """Stands in for the gRPC call only (the real endpoints are exercised in
    tests/integration). The first `concurrency` calls must all be in flight together (a
    barrier: fewer at once and they fail instead of passing by luck), and they finish in
    reverse order, so answers that came back in arrival order would be out of item order.
    `most` counts the calls in flight together."""

    def __init__(self, concurrency: int, key: Callable[[np.ndarray, dict[str, Any]], int]) -> None:
        self.concurrency, self.key = concurrency, key
        self.barrier = threading.Barrier(concurrency, timeout=WAIT_S)
        self.done = [threading.Event() for _ in range(concurrency)]
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.finished: list[int] = []

    def __call__(self, image: np.ndarray, prompt: str, **options: Any) -> str:
        key = self.key(image, options)
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if key < self.concurrency:
                self.barrier.wait()
                for later in self.done[key + 1 :]:
                    assert later.wait(WAIT_S), "a later item of the first round never finished"
            with self.lock:
                self.finished.append(key)
            return f"{prompt}:{options.get('seed')}"
        finally:
            with self.lock:
                self.in_flight -= 1
            if key < self.concurrency:
                self.done[key].set()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_answers_come_back_in_item_order(concurrency: int) -> None:
    answerer = ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=concurrency)
    endpoint = _Endpoint(concurrency, key=lambda image, _: int(image[0, 0, 0]))
    answerer._ask_undefended = endpoint
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    prompts = [f"q{i}" for i in range(12)]
    answers = answerer.undefended(images, prompts)
    assert [a.text for a in answers] == [f"q{i}:None" for i in range(12)]
    assert endpoint.most == concurrency
    # the first round finished last item first, yet the answers kept the items' order
    first_round = [key for key in endpoint.finished if key < concurrency]
    assert first_round == list(range(concurrency))[::-1]
    assert sorted(endpoint.finished) == list(range(12))


def test_defended_requests_keep_their_own_seeds() -> None:
    answerer = ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=3)

    class Reply:
        def __init__(self, text: str) -> None:
            self.text, self.num_samples_used = text, 5
            self.original_outvoted, self.agreement = False, 1.0

    endpoint = _Endpoint(3, key=lambda _, options: int(options["seed"]) - 10)
    answerer._ask = lambda image, prompt, **kw: Reply(endpoint(image, prompt, **kw))
    images = np.zeros((6, 2, 2, 3), np.uint8)
    answers = answerer.defended(
        images, ["p"] * 6, sigma=0.1, num_samples=5, seeds=[10, 11, 12, 13, 14, 15]
    )
    assert [a.text for a in answers] == [f"p:{s}" for s in range(10, 16)]
    assert endpoint.most == 3
    assert [key for key in endpoint.finished if key < 3] == [2, 1, 0]


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=0)
