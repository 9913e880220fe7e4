"""README.md as a newcomer reads it: its examples run as written against a real server, its
quick start is the two commands it promises, it stays small, and every relative link in it
and in docs/ points at a file that exists.

The quick start itself (`make serve`, `make test`) is checked, not run: CI runs `make test`,
and this file runs inside it. The shell and Python examples run with the session server in
place of `make serve`'s: its gRPC and HTTP addresses replace localhost:8001 / localhost:8000,
and $SMOOTHGUARD_URL points the CLI's default there.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
EXAMPLES = REPO_ROOT / "examples"
README_MAX_BYTES = 12 * 1024
QUICK_START = ["make serve", "make test"]
GRPC_PLACEHOLDER, HTTP_PLACEHOLDER = "localhost:8001", "localhost:8000"
VENV_CLI, VENV_PYTHON = ".venv/bin/smoothguard", ".venv/bin/python"
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^()\s]+)\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
EXAMPLE_TIMEOUT_S = 180
GZIP_MAGIC = b"\x1f\x8b"

pytestmark = pytest.mark.integration


def fenced_blocks(language: str) -> list[str]:
    """The bodies of README's fenced blocks in `language`, in order."""
    text = README.read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language]


def command_lines(block: str) -> list[str]:
    """A shell block's lines without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def is_quick_start(block: str) -> bool:
    return any(line.startswith("make ") for line in command_lines(block))


SHELL_EXAMPLES = [b for b in fenced_blocks("bash") if not is_quick_start(b)]
PYTHON_EXAMPLES = fenced_blocks("python")


def against(server: Any, code: str) -> str:
    """An example with the session server's addresses in place of make serve's."""
    return code.replace(GRPC_PLACEHOLDER, server.grpc_url).replace(
        HTTP_PLACEHOLDER, server.http_url
    )


def shell_as_run_here(code: str) -> str:
    """README's commands use the venv `make serve` made; where the tests run from another
    environment, the same command lines go through this interpreter."""
    if not (REPO_ROOT / VENV_CLI).exists():
        code = code.replace(VENV_CLI, f"{shlex.quote(sys.executable)} -m smoothguard_client.cli")
    if not (REPO_ROOT / VENV_PYTHON).exists():
        code = code.replace(VENV_PYTHON, shlex.quote(sys.executable))
    return code


def run(command: list[str], server: Any) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SMOOTHGUARD_URL": server.grpc_url, "COLUMNS": "120"}
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, timeout=EXAMPLE_TIMEOUT_S
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout.decode(errors='replace')}"
        f"\n--- stderr\n{result.stderr.decode(errors='replace')}"
    )
    return result


# ---------------------------------------------------------------- static checks


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}"


def test_quick_start_is_exactly_make_serve_then_make_test() -> None:
    blocks = [b for b in fenced_blocks("bash") if is_quick_start(b)]
    assert len(blocks) == 1, "README needs exactly one quick-start block"
    assert command_lines(blocks[0]) == QUICK_START


def test_readme_has_examples_that_call_the_server() -> None:
    shell = "\n".join(SHELL_EXAMPLES)
    assert "smoothguard ask --image examples/scene.png" in shell
    assert "smoothguard ask --audio examples/clip.wav" in shell
    assert f"curl -s {HTTP_PLACEHOLDER}/" in shell
    assert len(PYTHON_EXAMPLES) >= 2
    assert all(GRPC_PLACEHOLDER in block for block in PYTHON_EXAMPLES)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # code is not a link
    missing = []
    for target in LINK.findall(text):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_example_inputs_are_the_benchmark_items_make_examples_writes() -> None:
    """examples/make_examples.py's scene and clip, byte for byte in the WAV's case."""
    from smoothguard.core.audio import write_wav
    from smoothguard.synthetic.synthaudio import generate_split as audio_split
    from smoothguard.synthetic.synthpope import generate_split as image_split

    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None and spec.loader is not None
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    scene_path, clip_path = EXAMPLES / "scene.png", EXAMPLES / "clip.wav"
    assert scene_path.stat().st_size < 20_000 and clip_path.stat().st_size < 100_000
    scene = image_split("test", 1, seed_offset=make_examples.SCENE_INDEX)[0]
    assert ("red", "circle") in scene.objects
    shipped = np.asarray(Image.open(io.BytesIO(scene_path.read_bytes())).convert("RGB"))
    np.testing.assert_array_equal(shipped, scene.image)
    clip = audio_split("test", 1, seed_offset=make_examples.CLIP_INDEX)[0]
    assert ("high", "rising chirp") in clip.events
    assert clip_path.read_bytes() == write_wav(clip.waveform)


# ---------------------------------------------------------------- against the server


@pytest.mark.parametrize(
    "block", SHELL_EXAMPLES, ids=[f"shell-{i + 1}" for i in range(len(SHELL_EXAMPLES))]
)
def test_shell_example_runs_as_written(triton: Any, block: str) -> None:
    script = shell_as_run_here(against(triton, block))
    result = run(["bash", "-euo", "pipefail", "-c", script], triton)
    if "curl " in block:
        # curl -s exits 0 on an HTTP error too: the body must be Triton's answer, as JSON.
        assert not result.stdout.startswith(GZIP_MAGIC), (
            "the HTTP answer came back gzip-compressed to a client that did not ask for it "
            "(no Content-Encoding header): the gateway's upstream request asked tritonserver "
            "for gzip"
        )
        response = json.loads(result.stdout)
        outputs = {o["name"]: o["data"] for o in response["outputs"]}
        assert outputs["TEXT"][0].strip(), response
        assert sum(outputs["CLUSTER_SIZES"]) == outputs["NUM_SAMPLES_USED"][0], response
    else:
        assert result.stdout.strip()


@pytest.mark.parametrize(
    "block", PYTHON_EXAMPLES, ids=[f"python-{i + 1}" for i in range(len(PYTHON_EXAMPLES))]
)
def test_python_example_runs_as_written(triton: Any, block: str) -> None:
    result = run([sys.executable, "-c", against(triton, block)], triton)
    assert result.stdout.strip()
