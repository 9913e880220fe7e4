"""smoothguard_triton.metrics under the fake pb_utils: which series exist, and what one request
adds to them. The real server's :8002 output is checked in tests/integration/test_metrics.py."""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.core.settings import DefenseSettings, resolve_options


@pytest.fixture
def metrics_module(pb_utils: ModuleType) -> ModuleType:
    return importlib.import_module("smoothguard_triton.metrics")


def family(pb: ModuleType, name: str) -> Any:
    (made,) = pb.MetricFamily.created[name]  # one family per name per model instance
    return made


def test_every_series_exists_before_the_first_request(
    metrics_module: ModuleType, pb_utils: ModuleType
) -> None:
    metrics_module.DefenseMetrics(num_samples_max=64)
    requests = family(pb_utils, "smoothguard_requests_total")
    assert requests.kind == pb_utils.MetricFamily.COUNTER
    assert sorted(m.labels["decision"] for m in requests.metrics) == sorted(
        ["answered", "monitored", "abstained", "refused"]
    )
    assert all(m.value() == 0 for m in requests.metrics)
    (outvoted,) = family(pb_utils, "smoothguard_original_outvoted_total").metrics
    assert outvoted.value() == 0 and outvoted.labels == {}
    (agreement,) = family(pb_utils, "smoothguard_agreement").metrics
    assert agreement.buckets[0] == 0.0 and agreement.buckets[-1] == 1.0
    assert 0.6 in agreement.buckets  # the default min_agreement is a bucket edge
    (samples,) = family(pb_utils, "smoothguard_samples_used").metrics
    assert samples.buckets[-1] == 64 and {4, 10} <= set(samples.buckets)


def test_samples_buckets_end_at_the_configured_cap(metrics_module: ModuleType) -> None:
    assert metrics_module.samples_buckets(10) == [1, 2, 4, 6, 8, 10]
    assert metrics_module.samples_buckets(100)[-2:] == [64, 100]
    assert metrics_module.samples_buckets(3) == [1, 2, 3]


def test_record_counts_one_request(metrics_module: ModuleType, pb_utils: ModuleType) -> None:
    metrics = metrics_module.DefenseMetrics(num_samples_max=64)
    metrics.record("refused", original_outvoted=True, agreement=0.8, samples_used=10)
    metrics.record("answered", original_outvoted=False, agreement=1.0, samples_used=4)
    by_decision = {
        m.labels["decision"]: m.value()
        for m in family(pb_utils, "smoothguard_requests_total").metrics
    }
    assert by_decision == {"answered": 1, "monitored": 0, "abstained": 0, "refused": 1}
    (outvoted,) = family(pb_utils, "smoothguard_original_outvoted_total").metrics
    assert outvoted.value() == 1
    (agreement,) = family(pb_utils, "smoothguard_agreement").metrics
    assert agreement.observations == [0.8, 1.0]
    (samples,) = family(pb_utils, "smoothguard_samples_used").metrics
    assert samples.observations == [10, 4]


def test_an_unknown_decision_is_a_bug_not_a_new_series(
    metrics_module: ModuleType, pb_utils: ModuleType
) -> None:
    metrics = metrics_module.DefenseMetrics(num_samples_max=64)
    with pytest.raises(ValueError, match="decision"):
        metrics.record("answer", original_outvoted=False, agreement=1.0, samples_used=1)
    assert len(family(pb_utils, "smoothguard_requests_total").metrics) == 4


def test_the_aggregate_model_records_each_request(load_model: Any, pb_utils: ModuleType) -> None:
    """The adapter passes the decision and the evidence it returns, once per request."""
    model = load_model("aggregate").TritonPythonModel()
    settings = DefenseSettings()
    model.initialize(pb_utils.model_args(settings.to_parameters() | {"device": "cpu"}))
    texts = ["attacked", "yes", "yes", "yes", "yes"]
    vectors = np.array([[0, 1], [1, 0], [1, 0], [1, 0], [1, 0]], np.float32)
    # OPTIONS as the noise step writes them: with the ticket only the ensemble's steps can make
    options = model.tickets.issue(resolve_options(settings, num_samples=5, policy="refuse"))
    good = pb_utils.Request(
        CANDIDATES=np.array([[t.encode()] for t in texts], np.object_),
        EMBEDDINGS=vectors,
        OPTIONS=np.array([options.encode()], np.object_),
    )
    bad = pb_utils.Request(
        CANDIDATES=np.array([[b"a"], [b"b"]], np.object_),
        EMBEDDINGS=vectors[:1],
        OPTIONS=np.array([options.encode()], np.object_),
    )
    good_response, bad_response = model.execute([good, bad])
    assert not good_response.has_error() and bad_response.has_error()
    by_decision = {
        m.labels["decision"]: m.value()
        for m in family(pb_utils, "smoothguard_requests_total").metrics
    }
    assert by_decision["refused"] == 1 and sum(by_decision.values()) == 1
    (outvoted,) = family(pb_utils, "smoothguard_original_outvoted_total").metrics
    assert outvoted.value() == 1
    (agreement,) = family(pb_utils, "smoothguard_agreement").metrics
    assert agreement.observations == [pytest.approx(0.8)]
    (samples,) = family(pb_utils, "smoothguard_samples_used").metrics
    assert samples.observations == [5]
    model.finalize()


def test_direct_calls_are_answered_but_not_counted(load_model: Any, pb_utils: ModuleType) -> None:
    """OPTIONS written by hand (no ticket, or a forged one) come from a direct call to the
    public aggregate step, not from the ensemble: answered, never a defended request."""
    model = load_model("aggregate").TritonPythonModel()
    settings = DefenseSettings()
    model.initialize(pb_utils.model_args(settings.to_parameters() | {"device": "cpu"}))
    options = resolve_options(settings, num_samples=2, policy="refuse")
    forged = options.to_json()[:-1] + ', "ticket": "' + "0" * 64 + '"}'
    requests = [
        pb_utils.Request(
            CANDIDATES=np.array([[b"attacked"], [b"yes"]], np.object_),
            EMBEDDINGS=np.array([[0, 1], [1, 0]], np.float32),
            OPTIONS=np.array([text.encode()], np.object_),
        )
        for text in (options.to_json(), forged)
    ]
    responses = model.execute(requests)
    assert not any(r.has_error() for r in responses)
    requests_total = family(pb_utils, "smoothguard_requests_total").metrics
    assert sum(m.value() for m in requests_total) == 0
    (samples,) = family(pb_utils, "smoothguard_samples_used").metrics
    assert samples.observations == []
    model.finalize()


def test_tickets_bind_the_options_and_the_server_key(
    metrics_module: ModuleType, tmp_path: Any
) -> None:
    settings = DefenseSettings()
    key = metrics_module.server_key(tmp_path / "keys", server_pid=12345)
    assert metrics_module.server_key(tmp_path / "keys", server_pid=12345) == key  # shared
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    tickets = metrics_module.EnsembleTickets(key)
    options = resolve_options(settings, num_samples=3, seed=1)
    issued = json.loads(tickets.issue(options))
    assert tickets.verify(options, issued["ticket"])  # deterministic: the cache still hits
    assert tickets.issue(options) == tickets.issue(options)
    other = resolve_options(settings, num_samples=4, seed=1)
    assert not tickets.verify(other, issued["ticket"])
    assert not tickets.verify(options, None) and not tickets.verify(options, 7)
    stranger = metrics_module.EnsembleTickets(b"k" * 32)
    assert not stranger.verify(options, issued["ticket"])
