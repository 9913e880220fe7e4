"""build/gpu_smoke.py on this CPU machine, exactly as a lent GPU machine runs it (--device cpu,
small N): a bundle built from the installed pytriton wheel for this Python, unpacked into a
fresh environment, serving the gpu profile's models; answers equal to the in-process CPU
pipeline, load at three concurrencies, per-step statistics. Proves the bundle's closure and
the command before any GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    command = [
        sys.executable, str(REPO_ROOT / "build" / "bundle_tritonserver.py"),
        "--python", PYTHON, "--out", str(out), "--xz-preset", "0",
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300)
    (archive,) = out.glob("tritonserver-*.tar.xz")
    return archive


def test_bundle_is_the_minimal_closure(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    stubs = [n for n in names if n.endswith("triton_python_backend_stub")]
    stub_dir = "site/pytriton/tritonserver/python_backend_stubs"
    assert stubs == [f"{stub_dir}/{PYTHON}/triton_python_backend_stub"]  # this Python's only
    assert not any("libpython" in n for n in names)  # the machine's own, never bundled
    assert "site/pytriton/tritonserver/bin/tritonserver" in names
    assert any(n.startswith("site/nvidia_pytriton.libs/libtritonserver") for n in names)
    assert any(n.startswith("first/numpy/") for n in names)
    assert f"libpython{PYTHON}.so.1.0" in manifest["host_libraries"]
    digest = bundle.with_name(bundle.name + ".sha256").read_text().split()
    assert digest[1] == bundle.name and len(digest[0]) == 64


def test_smoke_passes_on_cpu(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    command = [
        sys.executable, str(REPO_ROOT / "build" / "gpu_smoke.py"), "--bundle", str(bundle),
        "--device", "cpu", "--num-samples", "4", "--duration-s", "2", "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] and results["failures"] == []
    answers = results["answers"]
    assert answers["defended_equal"] == answers["count"] > 0
    assert {i["defended"] for i in answers["items"]} >= {"yes", "no"}
    assert [r["concurrency"] for r in results["load"]] == [1, 8, 32]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in results["load"])
    assert {"noise", "generate", "mllm", "embedder", "aggregate"} <= set(results["steps"])
    assert results["memory"]["host_rss_mib"] > 0
    assert (out / "results.md").read_text().startswith("# GPU smoke (--device cpu): passed")
    # The server ran from the bundle, not from this environment's pytriton.
    assert Path(results["tritonserver"]).is_relative_to(out / "bundle")
