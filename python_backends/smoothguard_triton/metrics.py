"""The defense's Prometheus metrics, exported by Triton itself on its metrics port (:8002).

They are created through the Python backend's custom metrics API (`pb_utils.MetricFamily`), so
they live in Triton's own registry and are scraped with, and labelled like, its nv_* metrics:
no second port, no second exporter. docs/metrics.md says what each one means.

Lifetime rules of that API, which decide whether the metrics appear at all:
* The stub deletes every metric of a family when the Python `MetricFamily` object is garbage
  collected, and a `Metric` is removed from the server when it is; so both are held here, on an
  object the model keeps for its lifetime (a family created as a temporary in `initialize` makes
  its metrics vanish from :8002 although `.value()` read back fine a moment before).
* Triton prints a family only once it has a metric, so every series that a dashboard or an alert
  divides by is created up front at zero (all decisions, the outvoted counter, the histograms).
* Several instances of the model (separate stub processes) create the same families and label
  sets; Triton merges them into one series, so counts are per server, not per instance.
"""

from __future__ import annotations

from typing import Any, get_args

import triton_python_backend_utils as pb_utils

from smoothguard.policy import DecisionKind

DECISIONS: tuple[str, ...] = get_args(DecisionKind)

# Majority share is majority size / N with N counting empty answers: 0 when every answer is
# empty, 0.5 on a tie of two full clusters, 1 when all agree. min_agreement (0.6) is an edge.
AGREEMENT_BUCKETS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# N counts the clean copy; 4 is the adaptive first round, 10 the paper's N, 64 the default cap.
SAMPLES_BUCKETS: tuple[float, ...] = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64)


def samples_buckets(num_samples_max: int) -> list[float]:
    """SAMPLES_BUCKETS up to the server's cap, with the cap itself as the last edge."""
    edges = [float(b) for b in SAMPLES_BUCKETS if b < num_samples_max]
    return [*edges, float(num_samples_max)]


class DefenseMetrics:
    """One per model instance: holds the families and metrics alive and records one request."""

    def __init__(self, num_samples_max: int, backend: Any = pb_utils) -> None:
        self._backend = backend
        self._families: list[Any] = []
        requests = self._family(
            "smoothguard_requests_total",
            "Defended requests, by the decision the policy returned",
            backend.MetricFamily.COUNTER,
        )
        outvoted = self._family(
            "smoothguard_original_outvoted_total",
            "Requests whose unperturbed answer lost the vote (a likely attack)",
            backend.MetricFamily.COUNTER,
        )
        agreement = self._family(
            "smoothguard_agreement",
            "Share of the N answers in the majority cluster",
            backend.MetricFamily.HISTOGRAM,
        )
        samples = self._family(
            "smoothguard_samples_used",
            "Answers generated per request (adaptive sampling stops early)",
            backend.MetricFamily.HISTOGRAM,
        )
        self._requests = {d: requests.Metric(labels={"decision": d}) for d in DECISIONS}
        self._outvoted = outvoted.Metric(labels={})
        self._agreement = agreement.Metric(labels={}, buckets=list(AGREEMENT_BUCKETS))
        self._samples = samples.Metric(labels={}, buckets=samples_buckets(num_samples_max))

    def _family(self, name: str, description: str, kind: Any) -> Any:
        family = self._backend.MetricFamily(name=name, description=description, kind=kind)
        self._families.append(family)
        return family

    def record(
        self, decision: str, original_outvoted: bool, agreement: float, samples_used: int
    ) -> None:
        """Count one answered request; an unknown decision is a bug, so it raises."""
        if decision not in self._requests:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        self._requests[decision].increment(1.0)
        if original_outvoted:
            self._outvoted.increment(1.0)
        self._agreement.observe(float(agreement))
        self._samples.observe(float(samples_used))

    def close(self) -> None:
        """Drop the metrics before their families, the order the API asks for (at finalize)."""
        self._requests.clear()
        del self._outvoted, self._agreement, self._samples
        self._families.clear()
