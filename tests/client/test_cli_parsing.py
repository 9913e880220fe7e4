"""The `smoothguard` command line: arguments, output, and exit codes (no server needed)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from smoothguard_client import DefendedAnswer, SmoothGuardError, cli
from smoothguard_client.cli import SUBCOMMANDS, build_parser, main

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


ANSWER = DefendedAnswer(
    text="a cat [on a mat]",
    decision="answered",
    reason="original outvoted",
    chosen_index=1,
    cluster_sizes=(3, 1),
    agreement=0.75,
    original_outvoted=True,
    tie=False,
    num_samples_used=4,
    original_text="a dog",
    candidates=("a dog", "a cat [on a mat]", "a cat", "a cat"),
    latency_s=0.42,
    model="smoothguard",
)


class FakeClient:
    """Replaces SmoothGuardClient inside the cli module; records how it was built and called."""

    instances: ClassVar[list[FakeClient]] = []
    error: ClassVar[SmoothGuardError | None] = None
    ready: ClassVar[bool] = True

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, options
        self.undefended_model = "mllm"
        self.undefended_audio_model = "mllm_audio"
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        FakeClient.instances.append(self)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if FakeClient.error is not None:
            raise FakeClient.error

    def ask(self, *args: Any, **kwargs: Any) -> DefendedAnswer:
        self._record("ask", *args, **kwargs)
        return ANSWER

    def ask_undefended(self, *args: Any, **kwargs: Any) -> str:
        self._record("ask_undefended", *args, **kwargs)
        return "a dog"

    def ask_audio(self, *args: Any, **kwargs: Any) -> DefendedAnswer:
        self._record("ask_audio", *args, **kwargs)
        return ANSWER

    def ask_undefended_audio(self, *args: Any, **kwargs: Any) -> str:
        self._record("ask_undefended_audio", *args, **kwargs)
        return "a high tone"

    def health(self) -> dict[str, Any]:
        self._record("health")
        models = {"smoothguard": self.ready, "mllm": True}
        return {
            "url": self.url,
            "live": True,
            "ready": self.ready,
            "server_ready": self.ready,
            "server": "triton",
            "version": "2.51.0",
            "models": models,
        }


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    FakeClient.instances, FakeClient.error, FakeClient.ready = [], None, True
    monkeypatch.setattr(cli, "SmoothGuardClient", FakeClient)
    return FakeClient


# ---------------------------------------------------------------- parsing


def test_subcommands_come_from_the_registry() -> None:
    assert {"ask", "health"} <= set(SUBCOMMANDS)
    parser = build_parser()
    for name in SUBCOMMANDS:
        args = parser.parse_args(
            [name, "--url", "h:1"] + (["--image", "i", "--prompt", "p"] if name == "ask" else [])
        )
        assert args.url == "h:1" and args.run is SUBCOMMANDS[name].run


def test_ask_options_parse_to_typed_values() -> None:
    args = build_parser().parse_args(
        [
            "ask", "--image", "x.png", "--prompt", "what?", "--sigma", "0.3", "-n", "12",
            "--seed", "7", "--max-new-tokens", "20", "--policy", "refuse", "--candidates",
            "--json", "--timeout", "5", "--retries", "0",
        ]
    )  # fmt: skip
    assert (args.image, args.prompt, args.sigma, args.num_samples) == ("x.png", "what?", 0.3, 12)
    assert (args.seed, args.max_new_tokens, args.policy) == (7, 20, "refuse")
    assert args.candidates and args.json and not args.undefended
    assert (args.timeout, args.retries) == (5.0, 0)
    long = build_parser().parse_args(["ask", "--image", "x", "--prompt", "p", "--num-samples", "3"])
    assert long.num_samples == 3 and long.sigma is None and long.policy is None


def test_url_defaults_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOOTHGUARD_URL", "triton.internal:9001")
    assert build_parser().parse_args(["health"]).url == "triton.internal:9001"
    monkeypatch.delenv("SMOOTHGUARD_URL")
    assert build_parser().parse_args(["health"]).url == "localhost:8001"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "COMMAND"),
        (["ask", "--prompt", "p"], "--image"),
        (["ask", "--image", "x"], "--prompt"),
        (["ask", "--image", "x", "--prompt", "p", "--policy", "ignore"], "invalid choice"),
        (["ask", "--image", "x", "--prompt", "p", "-n", "many"], "invalid int"),
        (["ask", "--image", "x", "--prompt", "p", "--undefended", "--sigma", "0.1"], "--sigma"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert complaint in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--help"]) == 0
    assert "--num-samples" in capsys.readouterr().out


# ---------------------------------------------------------------- real transport, no server


def test_health_against_closed_port_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(["health", "--url", CLOSED, "--timeout", "2", "--retries", "0"])
    assert code == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ")


def test_ask_against_closed_port_exits_1(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ask", "--image", str(image), "--prompt", "p", "--url", CLOSED, "--retries", "0"]
    assert main([*argv, "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_missing_image_is_invalid_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.png"
    assert main(["ask", "--image", str(missing), "--prompt", "p", "--url", CLOSED]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT: image file not found") and "missing.png" in err


def test_unreadable_image_is_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert main(["ask", "--image", str(path), "--prompt", "p", "--url", CLOSED]) == 2
    assert "could not be decoded" in capsys.readouterr().err


# ---------------------------------------------------------------- output, with a fake client


def test_ask_prints_answer_and_evidence(
    fake: type[FakeClient], image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "--image", str(image), "--prompt", "what?", "--seed", "7", "--candidates"]
    assert main([*argv, "--url", "h:1", "--timeout", "3"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "a cat [on a mat]",  # model text is shown verbatim, not read as rich markup
        "answered",
        "75%",
        "3 / 1",
        "likely adversarial input",
        "a dog",
        "candidates",
        "unperturbed",
        "0.42 s",
    ):
        assert expected in out, expected
    (client,) = fake.instances
    assert client.url == "h:1" and client.options["timeout_s"] == 3.0
    name, args, kwargs = client.calls[0]
    assert (name, args) == ("ask", (str(image), "what?"))
    assert kwargs == {
        "sigma": None,
        "num_samples": None,
        "seed": 7,
        "max_new_tokens": None,
        "policy": None,
        "return_candidates": True,
        "adaptive": None,
    }


def test_ask_json(fake: type[FakeClient], image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--image", str(image), "--prompt", "p", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ANSWER.to_dict()


def test_ask_undefended(
    fake: type[FakeClient], image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "--image", str(image), "--prompt", "p", "--undefended", "--json"]
    assert main([*argv, "--max-new-tokens", "9"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["text"], data["model"]) == ("a dog", "mllm")
    name, _, kwargs = fake.instances[0].calls[0]
    assert (name, kwargs) == ("ask_undefended", {"max_new_tokens": 9})


def test_ask_audio_goes_to_the_audio_endpoint(
    fake: type[FakeClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "clip.wav"
    argv = ["ask", "--audio", str(wav), "--prompt", "Is there a chirp?", "--sigma", "0.5"]
    assert main([*argv, "--model", "guarded_audio", "--json"]) == 0
    (client,) = fake.instances
    assert client.options["audio_model"] == "guarded_audio" and "model" not in client.options
    name, args, kwargs = client.calls[0]
    assert (name, args, kwargs["sigma"]) == ("ask_audio", (str(wav), "Is there a chirp?"), 0.5)
    capsys.readouterr()
    assert main(["ask", "--audio", str(wav), "--prompt", "p", "--undefended", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["text"], data["model"]) == ("a high tone", "mllm_audio")


def test_image_and_audio_are_exclusive(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["ask", "--image", str(image), "--audio", "a.wav", "--prompt", "p"]
        )
    assert "not allowed with" in capsys.readouterr().err


def test_non_wav_audio_is_invalid_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clip.mp3"
    path.write_bytes(b"ID3\x03 not a wav file")
    assert main(["ask", "--audio", str(path), "--prompt", "p", "--url", CLOSED]) == 2
    assert "not a WAV file" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "code"), [("INVALID_ARGUMENT", 2), ("INTERNAL", 1)])
def test_server_errors_map_to_exit_codes(
    fake: type[FakeClient], image: Path, capsys: pytest.CaptureFixture[str], status: str, code: int
) -> None:
    fake.error = SmoothGuardError(status, "PROMPT is empty")
    assert main(["ask", "--image", str(image), "--prompt", ""]) == code
    assert capsys.readouterr().err == f"error: {status}: PROMPT is empty\n"


@pytest.mark.parametrize(("ready", "code"), [(True, 0), (False, 1)])
def test_health_exit_code_follows_readiness(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], ready: bool, code: int
) -> None:
    fake.ready = ready
    assert main(["health"]) == code
    out = capsys.readouterr().out
    assert "smoothguard" in out and "2.51.0" in out
    assert ("NOT READY" in out) is not ready
    assert main(["health", "--json"]) == code
    assert json.loads(capsys.readouterr().out)["ready"] is ready


def test_headers_reach_the_client() -> None:
    args = build_parser().parse_args(
        ["health", "--header", "Authorization=Bearer a=b", "--header", "x-admin-key=k"]
    )
    client = cli.client_from_args(args)
    try:
        assert client.headers == {"authorization": "Bearer a=b", "x-admin-key": "k"}
    finally:
        client.close()


@pytest.mark.parametrize("bad", ["no-equals", "=value", "two words=v"])
def test_a_malformed_header_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["health", "--header", bad])
    assert stop.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------- certified mode


def test_ask_certify_sends_the_answer_set_and_shows_the_certificate(
    fake: type[FakeClient],
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    certified = replace(
        ANSWER, text="yes", reason="certified", certified=True, certified_radius=0.0976
    )
    monkeypatch.setattr(
        FakeClient, "ask", lambda self, *a, **k: self._record("ask", *a, **k) or certified
    )
    argv = ["ask", "--image", str(image), "--prompt", "red square?", "--certify"]
    assert main([*argv, "--answer-set", "yes, no"]) == 0
    out = capsys.readouterr().out
    assert "certified" in out and "L2 radius 0.0976, pixel units" in out
    _, _, kwargs = fake.instances[0].calls[0]
    assert kwargs["certify"] is True and kwargs["answer_set"] == ("yes", "no")
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["certified"] is True and data["certified_radius"] == 0.0976
    assert fake.instances[1].calls[0][2]["answer_set"] is None  # the server's yes/no


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answer-set", "yes,no"], "--answer-set applies only with --certify"),
        (["--answer-set", "yes,,no", "--certify"], "expected comma-separated answers"),
        (["--certify", "--undefended"], "--certify only apply to the defended model"),
    ],
)
def test_certify_usage_errors(
    fake: type[FakeClient],
    image: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(["ask", "--image", str(image), "--prompt", "p", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not any(c.calls for c in fake.instances)


def test_certify_is_for_images(
    fake: type[FakeClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "--audio", str(tmp_path / "a.wav"), "--prompt", "p", "--certify"]
    assert main(argv) == 2
    assert "apply to images only" in capsys.readouterr().err
