"""The defense's own metrics on Triton's metrics port, next to Triton's nv_* metrics.

A server of its own, so that every count is exactly what this module sent: the series exist at
zero before the first request, then each counter and histogram matches the evidence the
responses carried, including a request whose unperturbed answer was outvoted.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from smoothguard.core.settings import DefenseSettings, resolve_options
from smoothguard.synthetic.synthpope import generate_split
from smoothguard_client import DefendedAnswer, SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration

DECISIONS = ("answered", "monitored", "abstained", "refused")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Series]:
    """Triton's /metrics text and its samples, keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    series: Series = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            series[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return text, series


def value(series: Series, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in series, f"{name}{labels} not exported"
    return series[key]


def buckets(series: Series, name: str) -> dict[float, float]:
    return {
        float(dict(labels)["le"]): v
        for (n, labels), v in series.items()
        if n == f"{name}_bucket" and len(labels) == 1
    }


def direct_aggregate(url: str) -> Any:
    """Two made-up candidates that outvote the original, straight to aggregate."""
    options = resolve_options(DefenseSettings(), num_samples=2, policy="refuse").to_json()
    inputs = []
    for name, array, wire in [
        ("CANDIDATES", np.array([[b"attacked"], [b"yes"]], np.object_), "BYTES"),
        ("EMBEDDINGS", np.array([[0, 1], [1, 0]], np.float32), "FP32"),
        ("OPTIONS", np.array([options.encode()], np.object_), "BYTES"),
    ]:
        item = grpcclient.InferInput(name, list(array.shape), wire)
        item.set_data_from_numpy(array)
        inputs.append(item)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer("aggregate", inputs, client_timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, start_triton: Any) -> Iterator[Any]:
    # The response cache on (off by default), for the cache test below; with its counters.
    running = start_triton(tmp_path_factory.mktemp("metrics"), ["steps.response_cache=true"])
    try:
        yield running
    finally:
        running.server.stop()


def test_defense_metrics_match_the_requests_sent(server: Any) -> None:
    text, before = scrape(server.metrics_url)
    for name, kind in (
        ("smoothguard_requests_total", "counter"),
        ("smoothguard_original_outvoted_total", "counter"),
        ("smoothguard_agreement", "histogram"),
        ("smoothguard_samples_used", "histogram"),
    ):
        assert f"# TYPE {name} {kind}" in text, name
    # Every series a rate or a ratio divides by exists, at zero, before any traffic.
    for decision in DECISIONS:
        assert value(before, "smoothguard_requests_total", decision=decision) == 0
    assert value(before, "smoothguard_original_outvoted_total") == 0
    assert value(before, "smoothguard_agreement_count") == 0
    assert value(before, "smoothguard_samples_used_count") == 0

    scenes = generate_split("test", 4)
    scene = scenes[0]
    colour, shape = scene.objects[0]
    present = f"Is there a {colour} {shape} in the image?"
    answers: list[DefendedAnswer] = []
    with SmoothGuardClient(server.grpc_url, retries=0, timeout_s=180) as client:
        answers.append(client.ask(scene.image, present, num_samples=4, seed=1))
        answers.append(
            client.ask(scene.image, "Describe the image.", num_samples=3, policy="monitor")
        )
        answers.append(client.ask(scene.image, present, num_samples=10, adaptive=True, seed=2))
        # The outvoted case without an attack: at sigma's limit the noise hides objects from
        # the noisy copies; when both copies of N=3 describe the scene alike and unlike the
        # clean copy, they outvote it (the default model answers yes/no questions at this
        # sigma too steadily for that). Seeded, so it reproduces; the search is bounded and
        # stops at the first hit.
        for seed, candidate in itertools.product(range(6), scenes):
            answers.append(
                client.ask(
                    candidate.image,
                    "Describe the image.",
                    num_samples=3,
                    sigma=1.0,
                    seed=seed,
                    policy="refuse",
                )
            )
            if answers[-1].original_outvoted:
                print(f"outvoted: scene seed {candidate.seed}, noise seed {seed}")
                break
        # A rejected request is not a defended request: it must not be counted.
        with pytest.raises(SmoothGuardError) as rejected:
            client.ask(scene.image, present, num_samples=0)
        assert rejected.value.status == "INVALID_ARGUMENT"
    # Nor is a direct call to the public aggregate step with made-up candidates: answered, and
    # refused by the policy, but its OPTIONS carry no ticket from the noise step.
    direct = direct_aggregate(server.grpc_url)
    assert direct.as_numpy("DECISION")[0] == b"refused"

    _, after = scrape(server.metrics_url)
    sent = len(answers)
    for decision in DECISIONS:
        expected = sum(a.decision == decision for a in answers)
        got = value(after, "smoothguard_requests_total", decision=decision)
        assert got == expected, (decision, got, [a.decision for a in answers])
    assert {a.decision for a in answers} >= {"answered", "monitored"}

    outvoted = [a for a in answers if a.original_outvoted]
    assert outvoted, "no request had its original outvoted: " + repr(
        [(a.original_text, a.cluster_sizes) for a in answers]
    )
    assert outvoted[-1].decision == "refused"
    assert value(after, "smoothguard_original_outvoted_total") == len(outvoted)

    # agreement: one observation per request, in [0, 1], each in the bucket it belongs to
    assert value(after, "smoothguard_agreement_count") == sent
    shares = [a.cluster_sizes[0] / a.num_samples_used for a in answers]
    assert all(0.0 <= s <= 1.0 for s in shares)
    for share, answer in zip(shares, answers, strict=True):
        assert share == pytest.approx(answer.agreement)
    assert value(after, "smoothguard_agreement_sum") == pytest.approx(sum(shares))
    agreement_buckets = buckets(after, "smoothguard_agreement")
    assert max(agreement_buckets) == float("inf") and min(agreement_buckets) >= 0.0
    for edge, count in agreement_buckets.items():
        assert count == sum(s <= edge for s in shares), (edge, count, shares)
    assert agreement_buckets[1.0] == sent  # nothing above 1

    # samples used: adaptive sampling stopped at its first round (4) or went on to all 10
    used = [a.num_samples_used for a in answers]
    assert used[0] == 4 and used[1] == 3 and used[2] in (4, 10)
    assert value(after, "smoothguard_samples_used_count") == sent
    assert value(after, "smoothguard_samples_used_sum") == sum(used)
    for edge, count in buckets(after, "smoothguard_samples_used").items():
        assert count == sum(u <= edge for u in used), (edge, count, used)

    # Next to Triton's own: the ensemble's success counter saw the same requests, and the
    # rejected one as a failure (Triton may publish its counters a moment after responding).
    deadline = time.monotonic() + 10
    while True:
        _, triton = scrape(server.metrics_url)
        success = value(triton, "nv_inference_request_success", model="smoothguard", version="1")
        if success == sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert success == sent
    failures = [  # one series per failure reason (REJECTED, BACKEND, ...) in Triton 2.51
        v
        for (name, labels), v in triton.items()
        if name == "nv_inference_request_failure" and ("model", "smoothguard") in labels
    ]
    # Triton 2.51 counted our one rejected ensemble request as 2 failures; the defense's own
    # counters above are the exact ones.
    assert sum(failures) >= 1


def test_response_cache_serves_seeded_repeats_only(server: Any) -> None:
    """With steps.response_cache on, a repeated seeded request skips the MLLM (Triton counts a
    cache hit on generate, in its statistics and on /metrics); an unseeded repeat never does,
    because its noisy copies, part of the cache key, are fresh OS-entropy noise."""
    scene = generate_split("test", 1)[0]
    prompt = "Is there a green square in the image?"  # no other test asks this

    def hits() -> tuple[int, float]:
        with grpcclient.InferenceServerClient(server.grpc_url) as admin:
            (stats,) = admin.get_inference_statistics("generate", as_json=True)["model_stats"]
        _, series = scrape(server.metrics_url)
        counted = int(stats["inference_stats"].get("cache_hit", {}).get("count", 0))
        return counted, value(series, "nv_cache_num_hits_per_model", model="generate", version="1")

    before = hits()
    with SmoothGuardClient(server.grpc_url, retries=0, timeout_s=180) as client:
        seeded = [
            client.ask(scene.image, prompt, seed=4321, sigma=0.3, return_candidates=True)
            for _ in range(2)
        ]
        assert seeded[0].candidates == seeded[1].candidates
        assert hits() == (before[0] + 1, before[1] + 1)  # the repeat skipped the MLLM
        for _ in range(2):
            client.ask(scene.image, prompt, sigma=0.3, return_candidates=True)
    assert hits() == (before[0] + 1, before[1] + 1)
