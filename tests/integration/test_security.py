"""Secure settings on a real server: TLS on gRPC, restricted admin APIs, refused seeds, and
logs free of prompts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from smoothguard.evaluation.answering import served_answerer
from smoothguard.evaluation.config import EvalConfig
from smoothguard.synthetic.synthpope import generate_split
from smoothguard_client import SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration

ADMIN_KEY = "test-admin-key-7f3a"
SECRET_PROMPT = "Is there a purple-unicorn-7731 in the image?"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost, made by the test with openssl."""
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory, start_triton: Any
) -> Iterator[tuple[Any, Path]]:
    tmp = tmp_path_factory.mktemp("secure")
    cert, key = self_signed(tmp)
    restricted = "model-repository,model-config,shared-memory,statistics,trace,logging"
    running = start_triton(
        tmp,
        ["defense.allow_seed=false", "defense.audit_log=true"],
        [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={cert}",
            f"--grpc-server-key={key}",
            f"--grpc-restricted-protocol={restricted}:smoothguard-admin-key={ADMIN_KEY}",
            f"--http-restricted-api={restricted}:smoothguard-admin-key={ADMIN_KEY}",
            "--model-control-mode=none",
        ],
    )
    try:
        yield running, cert
    finally:
        running.server.stop()


def test_tls_serves_and_plaintext_is_refused(secure: tuple[Any, Path]) -> None:
    running, cert = secure
    scene = generate_split("test", 1)[0]
    with SmoothGuardClient(
        running.grpc_url.replace("127.0.0.1", "localhost"),
        ssl=True,
        root_certificates=str(cert),
        timeout_s=120,
    ) as client:
        answer = client.ask(scene.image, SECRET_PROMPT, num_samples=3)
    assert answer.text and answer.num_samples_used == 3
    plain = SmoothGuardClient(running.grpc_url, retries=0, timeout_s=10)
    with plain, pytest.raises(SmoothGuardError):
        plain.ask(scene.image, "Describe the image.", num_samples=2)


def test_admin_apis_need_the_key_and_inference_does_not(secure: tuple[Any, Path]) -> None:
    running, cert = secure
    url = running.grpc_url.replace("127.0.0.1", "localhost")
    client = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(cert))
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index()
    assert (
        "smoothguard-admin-key" in info.value.message()
        or "restricted" in info.value.message().lower()
    )
    # gRPC prefixes the header name; HTTP uses it as configured
    header = {"triton-grpc-protocol-smoothguard-admin-key": ADMIN_KEY}
    index = client.get_model_repository_index(headers=header)
    assert {m.name for m in index.models} >= {"smoothguard", "mllm"}
    assert client.is_server_ready() and client.is_model_ready("smoothguard")


def test_defense_parameters_need_the_admin_key(secure: tuple[Any, Path]) -> None:
    running, cert = secure
    url = running.grpc_url.replace("127.0.0.1", "localhost")
    secured = {"ssl": True, "root_certificates": str(cert), "retries": 0}
    with SmoothGuardClient(url, **secured) as client, pytest.raises(SmoothGuardError):
        client.defense_parameters()
    header = {"triton-grpc-protocol-smoothguard-admin-key": ADMIN_KEY}
    with SmoothGuardClient(url, headers=header, **secured) as client:
        assert client.defense_parameters()["allow_seed"] == "false"


def test_the_served_evaluation_reaches_a_secured_deployment(
    secure: tuple[Any, Path], tmp_path: Path
) -> None:
    running, cert = secure
    url = running.grpc_url.replace("127.0.0.1", "localhost")
    header = (("triton-grpc-protocol-smoothguard-admin-key", ADMIN_KEY),)
    logs: list[str] = []
    config = EvalConfig(
        out=tmp_path, served=url, root_certificates=str(cert), headers=header, max_new_tokens=8
    )
    answerer = served_answerer(config, logs.append)
    # the unit was read with the admin key, not taken on trust; seeds are refused there
    assert logs == [
        "the server refuses seeds (allow_seed false): defended answers are drawn unseeded"
    ]
    scene = generate_split("test", 1)[0]
    images, prompts = np.stack([scene.image] * 2), ["Describe the image."] * 2
    answers = answerer.defended(images, prompts, sigma=0.15, num_samples=3, seeds=[1, 2])
    assert all(a.text and a.model_calls == 3 for a in answers)
    assert all(a.text for a in answerer.undefended(images, prompts))
    # without the key the unit cannot be read: said, and the flag is trusted
    logs.clear()
    served_answerer(EvalConfig(out=tmp_path, served=url, root_certificates=str(cert)), logs.append)
    assert len(logs) == 1 and "noise_unit" in logs[0]
    assert "taking it to be normalized, as this evaluation's, on trust" in logs[0]


def test_seeds_are_refused_when_configured(secure: tuple[Any, Path]) -> None:
    running, cert = secure
    scene = generate_split("test", 1)[0]
    with (
        SmoothGuardClient(
            running.grpc_url.replace("127.0.0.1", "localhost"),
            ssl=True,
            root_certificates=str(cert),
            timeout_s=120,
        ) as client,
        pytest.raises(SmoothGuardError) as info,
    ):
        client.ask(scene.image, "Describe the image.", seed=1)
    assert info.value.status == "INVALID_ARGUMENT" and "SEED" in info.value.message


def test_audit_lines_and_no_prompts_in_logs(secure: tuple[Any, Path]) -> None:
    running, cert = secure
    scene = generate_split("test", 1)[0]
    with SmoothGuardClient(
        running.grpc_url.replace("127.0.0.1", "localhost"),
        ssl=True,
        root_certificates=str(cert),
        timeout_s=120,
    ) as client:
        client.ask(scene.image, SECRET_PROMPT, num_samples=4, request_id="audit-me-42")
    assert running.server.log_path is not None
    log = running.server.log_path.read_text(errors="replace")
    assert "purple-unicorn-7731" not in log
    lines = [line for line in log.splitlines() if "audit-me-42" in line]
    assert len(lines) == 1, lines
    # Triton writes the message as a quoted string after its own prefix: decode it twice.
    record = json.loads(json.loads(lines[0][lines[0].index("] ") + 2 :]))
    assert record["event"] == "smoothguard_audit" and record["num_samples_used"] == 4
    assert {"decision", "agreement", "cluster_sizes", "original_outvoted"} <= record.keys()
