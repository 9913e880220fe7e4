"""The served answerer keeps several requests in flight and the answers in the items' order."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from smoothguard.evaluation.answerers import ServedAnswerer


class _Endpoint:
    """Stands in for the gRPC call only: answers slowly, later items sooner, and counts how
    many calls overlap (the real endpoints are exercised in tests/integration)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.most = 0

    def __call__(self, image: np.ndarray, prompt: str, **options: Any) -> str:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        value = int(image[0, 0, 0])
        time.sleep(0.05 + 0.02 * (value % 3) / (1 + value))
        with self.lock:
            self.in_flight -= 1
        return f"{prompt}:{options.get('seed')}"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_answers_come_back_in_item_order(concurrency: int) -> None:
    answerer = ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=concurrency)
    endpoint = _Endpoint()
    answerer._ask_undefended = endpoint
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    prompts = [f"q{i}" for i in range(12)]
    answers = answerer.undefended(images, prompts)
    assert [a.text for a in answers] == [f"q{i}:None" for i in range(12)]
    assert endpoint.most == concurrency


def test_defended_requests_keep_their_own_seeds() -> None:
    answerer = ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=3)

    class Reply:
        def __init__(self, text: str) -> None:
            self.text, self.num_samples_used = text, 5
            self.original_outvoted, self.agreement = False, 1.0

    endpoint = _Endpoint()
    answerer._ask = lambda image, prompt, **kw: Reply(endpoint(image, prompt, **kw))
    images = np.zeros((6, 2, 2, 3), np.uint8)
    answers = answerer.defended(
        images, ["p"] * 6, sigma=0.1, num_samples=5, seeds=[10, 11, 12, 13, 14, 15]
    )
    assert [a.text for a in answers] == [f"p:{s}" for s in range(10, 16)]
    assert endpoint.most > 1


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        ServedAnswerer("127.0.0.1:1", max_new_tokens=4, concurrency=0)
