"""The generate step's settings in a real server: `defense.failure_mode` (open: when some MLLM
calls fail, vote with the rest; closed: fail the request) and `steps.generate_fanout`
(requests: one BLS request per copy; batch, the cpu profile's: the copies as rows of one).

One server, rendered with `failure_mode: open` and `generate_fanout: requests`; beside its own
steps, the generate step of a render with `failure_mode: closed` and of one with
`generate_fanout: batch`, each behind a copy of the smoothguard ensemble. Failures are real
MLLM refusals, no fake model: `mllm_strict` is the real mllm with a tighter input bound
(sigma_max 0.045, so |value| <= the image range + 0.45) than noise and generate allow
(sigma_max 1.0), and with `clip: false` some noisy copies at sigma 0.5 pass that bound and are
refused by mllm_strict, while the clean copy (inside the image range) is answered. Which ones,
the test asks mllm_strict itself, one copy at a time.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from smoothguard.serving.server import ServerPorts, TritonServer
from smoothguard.synthetic.synthpope import generate_split

pytestmark = pytest.mark.integration

TIMEOUT_S = 120.0
# Every render: images only, noisy copies not clipped to the image range, few instances.
COMMON = [
    "overlays=[]",
    "defense.clip=false",
    "steps.generate_instances=2",
    "steps.noise_instances=1",
    "steps.aggregate_instances=1",
]
OPEN_REQUESTS = ["defense.failure_mode=open", "steps.generate_fanout=requests"]
CLOSED = ["defense.failure_mode=closed", "steps.generate_fanout=requests"]
BATCH = ["defense.failure_mode=open", "steps.generate_fanout=batch"]
STRICT = {"sigma": "0.04", "sigma_max": "0.045"}  # mllm_strict's bound (see the module doc)
NUM_SAMPLES, SIGMA, MAX_NEW_TOKENS = 8, 0.5, 8
# A scene with few pixels near the normalised range's edge (test scene 15, a red circle on a
# plain background), so that about a third of its noisy copies at sigma 0.5 pass mllm_strict's
# bound; on a scene with many bright pixels every noisy copy is refused.
SCENE = generate_split("test", 1, seed_offset=15)[0]
PROMPT = b"Describe the image."


def read_config(folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def add_model(repo: Path, source: Path, name: str, **changes: Any) -> model_config_pb2.ModelConfig:
    """A copy of a rendered model under another name, some parameters changed; `count`
    sets its instances, `step` renames an ensemble's generate step."""
    target = repo / name
    shutil.copytree(source, target, symlinks=True)
    config = read_config(target)
    config.name = name
    if "count" in changes:
        config.instance_group[0].count = changes.pop("count")
    if "step" in changes:
        step = changes.pop("step")
        for each in config.ensemble_scheduling.step:
            if each.model_name == "generate":
                each.model_name = step
    for key, value in changes.items():
        assert key in config.parameters, key
        config.parameters[key].string_value = value
    (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    from render import render

    tmp = tmp_path_factory.mktemp("generate_modes")
    repo = render("cpu", tmp / "repo", [*COMMON, *OPEN_REQUESTS])
    closed = render("cpu", tmp / "closed", [*COMMON, *CLOSED])
    batch = render("cpu", tmp / "batch", [*COMMON, *BATCH])
    # The renders differ in the setting under test only.
    served, other = read_config(repo / "generate"), read_config(closed / "generate")
    assert {k for k in served.parameters if served.parameters[k] != other.parameters[k]} == {
        "failure_mode"
    }
    other = read_config(batch / "generate")
    assert {k for k in served.parameters if served.parameters[k] != other.parameters[k]} == {
        "fanout"
    }
    add_model(repo, repo / "mllm", "mllm_strict", count=1, **STRICT)
    add_model(repo, repo / "generate", "generate_strict", mllm_model="mllm_strict")
    add_model(repo, closed / "generate", "generate_strict_closed", mllm_model="mllm_strict")
    add_model(repo, batch / "generate", "generate_batch")
    add_model(repo, repo / "smoothguard", "smoothguard_strict", step="generate_strict")
    add_model(
        repo, repo / "smoothguard", "smoothguard_strict_closed", step="generate_strict_closed"
    )
    add_model(repo, repo / "smoothguard", "smoothguard_batch", step="generate_batch")
    running = TritonServer(repo, ports=ServerPorts.free(), work_dir=tmp / "server")
    running.start(timeout_s=240)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(server: TritonServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")


def tensor(name: str, array: np.ndarray, wire: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def defended_inputs(seed: int, num_samples: int, sigma: float) -> list[grpcclient.InferInput]:
    return [
        tensor("IMAGE", SCENE.image, "UINT8"),
        tensor("PROMPT", np.array([PROMPT], np.object_), "BYTES"),
        tensor("NUM_SAMPLES", np.array([num_samples], np.int32), "INT32"),
        tensor("SIGMA", np.array([sigma], np.float32), "FP32"),
        tensor("SEED", np.array([seed], np.int64), "INT64"),
        tensor("MAX_NEW_TOKENS", np.array([MAX_NEW_TOKENS], np.int32), "INT32"),
        tensor("RETURN_CANDIDATES", np.array([True]), "BOOL"),
    ]


@dataclass
class Answer:
    text: str
    candidates: list[str]
    num_samples_used: int
    original_text: str
    cluster_sizes: list[int]
    decision: str


def ask(client: grpcclient.InferenceServerClient, model: str, inputs: list[Any]) -> Answer:
    out = client.infer(model, inputs, client_timeout=TIMEOUT_S)

    def text(name: str) -> str:
        return out.as_numpy(name).reshape(-1)[0].decode()

    return Answer(
        text=text("TEXT"),
        candidates=[c.decode() for c in out.as_numpy("CANDIDATES").reshape(-1)],
        num_samples_used=int(out.as_numpy("NUM_SAMPLES_USED")[0]),
        original_text=text("ORIGINAL_TEXT"),
        cluster_sizes=out.as_numpy("CLUSTER_SIZES").tolist(),
        decision=text("DECISION"),
    )


@dataclass
class Copies:
    """A seed's copies as the noise step makes them, and what mllm_strict makes of each:
    its answer, or its refusal."""

    seed: int
    answers: dict[int, str]
    refusals: dict[int, InferenceServerException]


def strict_outcome(
    client: grpcclient.InferenceServerClient, pixels: np.ndarray
) -> str | InferenceServerException:
    inputs = [
        tensor("PIXEL_VALUES", pixels[None], "FP32"),
        tensor("PROMPT", np.array([[PROMPT]], np.object_), "BYTES"),
        tensor("MAX_NEW_TOKENS", np.array([[MAX_NEW_TOKENS]], np.int32), "INT32"),
    ]
    try:
        out = client.infer("mllm_strict", inputs, client_timeout=TIMEOUT_S)
    except InferenceServerException as exc:
        return exc
    return out.as_numpy("TEXT").reshape(-1)[0].decode()


@pytest.fixture(scope="module")
def copies(client: grpcclient.InferenceServerClient) -> Copies:
    """The first seed whose noisy copies mllm_strict partly refuses: at least two refused and
    two answered besides the clean copy (seeded noise: the same copies in the ensembles)."""
    for seed in range(40):
        noise = client.infer("noise", defended_inputs(seed, NUM_SAMPLES, SIGMA))
        pixels = noise.as_numpy("PIXEL_VALUES")
        assert pixels.shape[0] == NUM_SAMPLES
        outcomes = {i: strict_outcome(client, pixels[i]) for i in range(NUM_SAMPLES)}
        answers = {i: o for i, o in outcomes.items() if isinstance(o, str)}
        refusals = {i: o for i, o in outcomes.items() if not isinstance(o, str)}
        assert 0 in answers, f"mllm_strict refused the clean copy: {refusals.get(0)}"
        if len(refusals) >= 2 and len(answers) >= 3:
            return Copies(seed, answers, refusals)
    pytest.fail("no seed in 0..39 gave noisy copies that mllm_strict partly refuses")


def test_failure_mode_open_votes_with_the_copies_the_mllm_answered(
    client: grpcclient.InferenceServerClient, copies: Copies
) -> None:
    for refusal in copies.refusals.values():  # real refusals, by the MLLM's own input check
        assert refusal.status() == "StatusCode.INVALID_ARGUMENT", refusal
        assert "PIXEL_VALUES" in refusal.message(), refusal
    answer = ask(client, "smoothguard_strict", defended_inputs(copies.seed, NUM_SAMPLES, SIGMA))
    survivors = [copies.answers[i] for i in sorted(copies.answers)]
    assert answer.num_samples_used == len(survivors) < NUM_SAMPLES
    assert answer.candidates == survivors  # the answered copies, in order, and only those
    assert answer.original_text == copies.answers[0]
    assert sum(answer.cluster_sizes) == len(survivors)
    assert answer.text in survivors


def bls_status(client: grpcclient.InferenceServerClient, refusal: InferenceServerException) -> str:
    """The status a caller of generate gets for an MLLM call that failed with `refusal`: the
    MLLM's own from Triton 2.59 (python_backend r25.06, commit 7f21b67, keeps a BLS error's
    code), INTERNAL before (r24.10, the pinned cpu server: every BLS error response is
    INTERNAL, whatever the called model said; only the message carries its reason)."""
    version = tuple(int(v) for v in client.get_server_metadata().version.split(".")[:2])
    return refusal.status() if version >= (2, 59) else "StatusCode.INTERNAL"


def test_failure_mode_closed_fails_the_request_with_the_mllms_reason(
    client: grpcclient.InferenceServerClient, copies: Copies
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "smoothguard_strict_closed",
            defended_inputs(copies.seed, NUM_SAMPLES, SIGMA),
            client_timeout=TIMEOUT_S,
        )
    error = info.value
    first = min(copies.refusals)
    refusal = copies.refusals[first]
    assert error.status() == bls_status(client, refusal), (error.message(), refusal.message())
    message = error.message()
    expected = (
        f"{len(copies.refusals)} of {NUM_SAMPLES} MLLM calls failed (failure_mode=closed); "
        f"sample {first}: "
    )
    assert expected in message, message
    # the mllm's own reason for that copy, numbers and all
    reason = re.sub(r"^\[[^\]]*\]\s*", "", refusal.message())
    assert reason in message, (reason, message)


def mllm_counts(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    """mllm's successful requests and the rows (inferences) they carried, so far."""
    (stats,) = client.get_inference_statistics("mllm").model_stats
    return int(stats.inference_stats.success.count), int(stats.inference_count)


def test_requests_fanout_answers_as_the_batch_fanout(
    client: grpcclient.InferenceServerClient,
) -> None:
    """Same seed, same answer, same candidates; one mllm request per copy against one
    request of N rows (Triton's own counts)."""
    answers, counts = {}, {}
    for model in ("smoothguard", "smoothguard_batch"):
        before = mllm_counts(client)
        answers[model] = ask(client, model, defended_inputs(seed=3, num_samples=10, sigma=0.15))
        after = mllm_counts(client)
        counts[model] = (after[0] - before[0], after[1] - before[1])
    assert counts == {"smoothguard": (10, 10), "smoothguard_batch": (1, 10)}, counts
    requests, batch = answers["smoothguard"], answers["smoothguard_batch"]
    assert requests == batch
    assert requests.num_samples_used == 10 and len(requests.candidates) == 10
