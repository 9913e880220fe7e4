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

What counts as a defended request: one that came through an ensemble (smoothguard,
smoothguard_audio), not a direct call to the public `aggregate` step with made-up candidates.
`EnsembleTickets` below is how the aggregate step tells them apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, get_args

import triton_python_backend_utils as pb_utils

from smoothguard.core.policy import DecisionKind
from smoothguard.core.settings import RequestOptions

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


# The key OPTIONS carries the ticket under (parse_options' extra key).
TICKET_KEY = "ticket"
_KEY_BYTES = 32


class EnsembleTickets:
    """A mark the noise step puts on the OPTIONS it writes, which aggregate checks before it
    counts a request as defended.

    Why a mark: Triton serves every step to any client, and the ensemble hands a step nothing
    a client could not send itself (not even a distinct request id), so aggregate cannot see
    who called it. The ensemble's one unforgeable hand-off is the noise step's own output: the
    ticket is an HMAC-SHA256 of the canonical OPTIONS JSON under a key that never leaves the
    server. A client who writes OPTIONS by hand (to aggregate, generate, ...) cannot make a
    valid ticket; such calls are answered as before but not counted, and audit lines say so.

    The key: 32 random bytes per tritonserver process, shared by its stubs (all children of
    that process) through a file only the server's user can read, created atomically by the
    first stub to need it (`ticket-<server pid>.key` under `<tmp>/smoothguard-<uid>/`). Not a
    config parameter, since Triton serves model configs to anyone. A new server, a new key.

    Deterministic on purpose: a seeded request repeated gets the same OPTIONS, so generate's
    response cache still hits. The price, stated: a client that calls `noise` directly gets a
    valid ticket for the options it asked for and could replay it to `aggregate` with made-up
    candidates. That costs a call to noise per distinct options and is closed by exposing only
    the public endpoints (smoothguard, smoothguard_audio, mllm*, embedder) at the gateway.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else server_key()

    def tag(self, options: RequestOptions) -> str:
        return self._tag(options.to_json())

    def _tag(self, canonical: str) -> str:
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()

    def issue(self, options: RequestOptions) -> str:
        """OPTIONS JSON for the next steps: the options and their ticket (the canonical JSON
        written once: it was a tenth of the noise step's CPU, twice)."""
        canonical = options.to_json()
        payload = json.loads(canonical)
        payload[TICKET_KEY] = self._tag(canonical)
        return json.dumps(payload, sort_keys=True)

    def verify(self, options: RequestOptions, ticket: object) -> bool:
        """True when `ticket` is the one this server's noise step issued for `options`."""
        return isinstance(ticket, str) and hmac.compare_digest(ticket, self.tag(options))


def server_key(directory: Path | None = None, server_pid: int | None = None) -> bytes:
    """The per-server secret of EnsembleTickets: read it, or create it if this stub is first."""
    base = directory or Path(tempfile.gettempdir()) / f"smoothguard-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{base} must be a directory private to uid {os.getuid()}")
    pid = os.getppid() if server_pid is None else server_pid  # the stubs' parent: tritonserver
    path = base / f"ticket-{pid}.key"
    if not path.exists():
        _remove_stale_keys(base)
        temp = base / f".ticket-{pid}-{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # atomic: exactly one stub's key wins, complete when visible
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes, not a {_KEY_BYTES}-byte key")
    return key


def _remove_stale_keys(base: Path) -> None:
    """Keys of servers that no longer run (one 32-byte file per server start otherwise)."""
    for old in base.glob("ticket-*.key"):
        try:
            os.kill(int(old.stem.removeprefix("ticket-")), 0)
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue
