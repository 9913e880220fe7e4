"""The drain budget agrees everywhere a SIGTERM can come from: Kubernetes (grace period vs
Triton's --exit-timeout-secs, checked in test_manifests.test_graceful_shutdown_budget) and
our own launcher, whose stop() must not SIGKILL a server that is still draining."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from smoothguard.serving.server import TritonServer

DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "base" / "deployment.yaml"


def test_local_stop_waits_longer_than_the_drain() -> None:
    exit_timeout = next(
        f.default for f in dataclasses.fields(TritonServer) if f.name == "exit_timeout_s"
    )
    stop_timeout = inspect.signature(TritonServer.stop).parameters["timeout_s"].default
    assert stop_timeout > exit_timeout, (stop_timeout, exit_timeout)


def test_launcher_and_deployment_use_the_same_drain() -> None:
    text = DEPLOYMENT.read_text()
    (flag,) = re.findall(r"--exit-timeout-secs=(\d+)", text)
    (grace,) = re.findall(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    exit_timeout = next(
        f.default for f in dataclasses.fields(TritonServer) if f.name == "exit_timeout_s"
    )
    assert int(flag) == exit_timeout
    assert int(grace) > int(flag)


def test_the_supervisors_worst_stop_fits_the_grace_period() -> None:
    """Drain (requests in flight finish), then Triton's own stop: both bounded, and together
    with the preStop sleep inside Kubernetes' grace period, so the kubelet never SIGKILLs a
    supervisor that is still stopping cleanly."""
    from smoothguard.serving.supervisor import Supervisor

    defaults = {f.name: f.default for f in dataclasses.fields(Supervisor)}
    text = DEPLOYMENT.read_text()
    (grace,) = re.findall(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    (pre_stop,) = (int(s) for s in re.findall(r"sleep:\s*\n\s*seconds:\s*(\d+)", text))
    worst = pre_stop + defaults["drain_timeout_s"] + defaults["stop_timeout_s"]
    assert worst <= int(grace), (worst, grace)
    assert defaults["stop_grace_s"] < defaults["stop_timeout_s"]
