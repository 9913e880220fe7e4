"""The client library and the `smoothguard` command line against the real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from smoothguard.synthetic.synthpope import generate_split
from smoothguard_client import AsyncSmoothGuardClient, SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    scene = generate_split("test", 2)[1]
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(scene.image).save(path)
    return scene, path


def test_ask_with_a_png_file(triton: Any, scene_png: tuple[Any, Path]) -> None:
    scene, path = scene_png
    colour, shape = scene.objects[-1]
    with SmoothGuardClient(triton.grpc_url) as client:
        answer = client.ask(
            path,
            f"Is there a {colour} {shape} in the image?",
            num_samples=6,
            seed=5,
            return_candidates=True,
        )
        assert answer.text.lower().startswith("yes")
        assert len(answer.candidates) == 6 and sum(answer.cluster_sizes) == 6
        undefended = client.ask_undefended(
            scene.image, f"Is there a {colour} {shape} in the image?"
        )
        assert undefended.lower().startswith("yes")
        vectors = client.embed(["yes", "no"])
        assert vectors.shape[0] == 2
        health = client.health()
        assert health["ready"] and all(health["models"].values())


def test_defense_parameters_are_the_served_defaults(triton: Any) -> None:
    from smoothguard.core.settings import DefenseSettings

    async def read() -> tuple[dict[str, str], list[str]]:
        async with AsyncSmoothGuardClient(triton.grpc_url) as client:
            return await client.defense_parameters(), await client.defense_steps()

    with SmoothGuardClient(triton.grpc_url) as client:
        params, steps = client.defense_parameters(), client.defense_steps()
    assert (params, steps) == asyncio.run(read())
    assert steps == ["noise", "generate", "embedder", "aggregate"]  # no denoiser configured
    served = DefenseSettings.from_parameters(params)
    assert served.noise_unit == "normalized" and served.sigma == DefenseSettings().sigma


def test_invalid_input_raises_a_typed_error(triton: Any, scene_png: tuple[Any, Path]) -> None:
    scene, _ = scene_png
    with SmoothGuardClient(triton.grpc_url) as client, pytest.raises(SmoothGuardError) as info:
        client.ask(scene.image, "Describe the image.", num_samples=0)
    assert info.value.status == "INVALID_ARGUMENT" and "NUM_SAMPLES" in info.value.message


def test_async_client_runs_requests_concurrently(triton: Any, scene_png: tuple[Any, Path]) -> None:
    scene, _ = scene_png

    async def run() -> list[Any]:
        async with AsyncSmoothGuardClient(triton.grpc_url) as client:
            return await asyncio.gather(
                *(
                    client.ask(scene.image, "Describe the image.", num_samples=4, seed=i)
                    for i in range(3)
                )
            )

    answers = asyncio.run(run())
    assert all(a.text and a.num_samples_used == 4 for a in answers)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "smoothguard_client.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_ask_and_health(triton: Any, scene_png: tuple[Any, Path]) -> None:
    _, path = scene_png
    done = cli(
        "ask",
        "--url",
        triton.grpc_url,
        "--image",
        str(path),
        "--prompt",
        "Describe the image.",
        "-n",
        "4",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["text"] and payload["num_samples_used"] == 4
    table = cli(
        "ask",
        "--url",
        triton.grpc_url,
        "--image",
        str(path),
        "--prompt",
        "Describe the image.",
        "-n",
        "3",
    )
    assert table.returncode == 0 and "agreement" in table.stdout.lower()
    health = cli("health", "--url", triton.grpc_url)
    assert health.returncode == 0, health.stderr
    bad = cli("ask", "--url", triton.grpc_url, "--image", str(path), "--prompt", "   ")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    np.testing.assert_equal(bad.stdout, "")
