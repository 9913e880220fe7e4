"""The gpu profile, checked on a machine without a GPU: rendered configs parse as Triton
ModelConfig protobufs, ensembles chain, engine-build commands carry the right flags, and
docker-compose.yml names what it must."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from check_ensemble import check_repository
from render import REPO_ROOT, RenderError, load_profile, parse_model_config, render

sys_path_gpu = REPO_ROOT / "build" / "gpu"
GPU_COMMON = {
    "smoothguard", "noise", "generate", "aggregate", "mllm",
    "embedder", "embedder_tokenize", "embedder_encoder", "embedder_pool",
}  # fmt: skip
QWEN = ["mllm.runtime=llm_api", "mllm.family=qwen2_5_vl", "mllm.image_size=448"]


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render("gpu", tmp_path_factory.mktemp("gpu") / "repo")


def configs(repo: Path) -> dict[str, object]:
    return {
        p.parent.name: parse_model_config(p.read_text(), p)
        for p in sorted(repo.glob("*/config.pbtxt"))
    }


def test_llava_engine_repository(gpu_repo: Path) -> None:
    parsed = configs(gpu_repo)
    assert set(parsed) == GPU_COMMON | {"mllm_vision", "mllm_llm"}
    assert all(c.name == n for n, c in parsed.items())
    llm = parsed["mllm_llm"]
    assert llm.backend == "tensorrtllm"
    assert llm.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    assert llm.parameters["gpt_model_path"].string_value == "/models/engines/llava/llm"
    assert parsed["mllm_vision"].platform == "tensorrt_plan"
    assert parsed["embedder"].platform == "ensemble"
    assert parsed["embedder_encoder"].platform == "tensorrt_plan"
    assert parsed["generate"].parameters["fanout"].string_value == "requests"
    assert parsed["mllm"].parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert parsed["noise"].instance_group[0].kind == 1  # KIND_GPU
    for path in gpu_repo.rglob("*"):
        if path.name == "config.pbtxt":
            assert "${" not in path.read_text()
    link = gpu_repo / "embedder_encoder" / "1" / "model.plan"
    assert link.is_symlink() and str(link.readlink()) == "/models/engines/embedder/model.plan"
    vision = gpu_repo / "mllm_vision" / "1" / "model.plan"
    assert str(vision.readlink()) == "/models/engines/llava/vision/model.engine"
    assert (gpu_repo / "aggregate" / "1" / "model.py").exists()  # code from the base model


def test_qwen_llm_api_repository(tmp_path: Path) -> None:
    repo = render("gpu", tmp_path / "repo", QWEN)
    parsed = configs(repo)
    assert set(parsed) == GPU_COMMON
    assert parsed["mllm"].backend == "python"
    assert parsed["noise"].parameters["image_size"].string_value == "448"
    assert check_repository(repo) == []


def test_every_ensemble_chains(gpu_repo: Path) -> None:
    assert check_repository(gpu_repo) == []


def test_cpu_profile_is_untouched_by_gpu_overlays(tmp_path: Path) -> None:
    repo = render("cpu", tmp_path / "repo")
    assert {p.name for p in repo.iterdir() if p.is_dir()} == {
        "smoothguard", "noise", "generate", "embedder", "aggregate", "mllm",
        "smoothguard_audio", "noise_audio", "generate_audio", "mllm_audio",
    }  # fmt: skip
    assert parse_model_config((repo / "embedder" / "config.pbtxt").read_text(), repo).backend == (
        "python"
    )
    # no engine links; only the model-path links that keep host paths out of the configs
    assert all(p.name.endswith("_path") for p in repo.rglob("*") if p.is_symlink())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mllm.expected_concurrency=100", "expected_concurrency"),
        ("steps.generate_instances=2", "each generate instance keeps one"),
        ("steps.generate_fanout=batch", "one prompt table per request"),
        ("mllm.family=qwen2_5_vl", "no TensorRT engine path"),
        ("mllm.runtime=onnx", "mllm.runtime"),
        ("mllm.max_output_len=16", "max_output_len"),
    ],
)
def test_gpu_misconfiguration_fails_at_render(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render("gpu", tmp_path / "repo", [override])


def test_embedder_shape_mismatch_is_caught(gpu_repo: Path, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(gpu_repo, repo, symlinks=True)
    path = repo / "embedder_pool" / "config.pbtxt"
    path.write_text(
        path.read_text().replace(
            '"ATTENTION_MASK" data_type: TYPE_INT32', '"ATTENTION_MASK" data_type: TYPE_INT64'
        )
    )
    assert any("TYPE_INT64" in p for p in check_repository(repo))


def _commands(overrides: list[str] | None = None) -> list[list[str]]:
    import sys

    sys.path.insert(0, str(sys_path_gpu))
    from build_engines import build_commands

    return build_commands(load_profile("gpu", overrides), Path("/e"), Path("/w"), "/ex")


def _flags(command: list[str]) -> dict[str, str]:
    out, it = {}, iter(command[1:])
    for token in it:
        if token.startswith("--") and "=" in token:
            key, _, value = token.partition("=")
            out[key] = value
        elif token.startswith("--"):
            out[token] = next(it)
    return out


def test_llava_engine_build_flags() -> None:
    profile = load_profile("gpu")
    convert, build, vision, export, trtexec = _commands()
    assert convert[1] == "/ex/models/core/llama/convert_checkpoint.py"
    assert _flags(convert)["--model_dir"] == profile["mllm"]["model_path"]
    flags = _flags(build)
    assert build[0] == "trtllm-build"
    batch = int(flags["--max_batch_size"])
    assert batch == profile["mllm"]["max_batch_size"]
    assert int(flags["--max_multimodal_len"]) == batch * 576
    assert flags["--paged_kv_cache"] == "enable"
    assert flags["--remove_input_padding"] == "enable"  # needed for in-flight batching
    assert flags["--gpt_attention_plugin"] == "float16"
    assert int(flags["--max_input_len"]) >= 576 + 1
    assert int(flags["--max_seq_len"]) > int(flags["--max_input_len"])
    assert flags["--output_dir"] == "/e/llava/llm"
    assert vision[1].endswith("multimodal/build_multimodal_engine.py")
    assert _flags(vision)["--model_type"] == "llava"
    assert int(_flags(vision)["--max_batch_size"]) == batch
    assert _flags(vision)["--output_dir"] == "/e/llava/vision"
    assert trtexec[0] == "trtexec"
    t = _flags(trtexec)
    assert t["--saveEngine"] == "/e/embedder/model.plan" and "--fp16" in trtexec
    assert t["--maxShapes"] == "input_ids:64x128,attention_mask:64x128"
    assert export[1].endswith("export_embedder.py")


def test_multimodal_len_follows_batch() -> None:
    build = _commands(["mllm.max_batch_size=96"])[1]
    assert int(_flags(build)["--max_multimodal_len"]) == 96 * 576


def test_qwen_builds_only_the_embedder() -> None:
    commands = _commands(QWEN)
    assert [c[0] for c in commands] == ["python3", "trtexec"]


def test_dry_run_prints_shell_commands(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    sys.path.insert(0, str(sys_path_gpu))
    from build_engines import main

    assert main(["--dry-run", "--out", "/e"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert shlex.split(lines[1])[0] == "trtllm-build"


def test_container_pin_is_in_one_place() -> None:
    container = load_profile("gpu")["container"]
    tag = container["image"].rsplit(":", 1)[1]
    assert tag.endswith("-trtllm-python-py3")
    assert (tag, container["tensorrt_llm"]) == ("25.08-trtllm-python-py3", "0.21.0")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    images = {s.get("image") for s in compose["services"].values()}
    assert container["image"] in images


def test_docker_compose() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    server, builder, cpu = services["tritonserver"], services["engine-build"], services["cpu"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert server["shm_size"]
    assert {"8000:8000", "8001:8001", "8002:8002"} <= set(server["ports"])
    assert "/v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["engine-build"]["condition"] == "service_completed_successfully"
    assert any(str(v).endswith(":/models") or ":/models:" in str(v) for v in server["volumes"])
    assert "--model-repository=/models/repo" in server["command"]
    # under the supervisor, open on the container's address; its watchdog needs explicit
    # model control
    assert server["command"][:6] == [
        "python3", "-m", "smoothguard.supervisor", "--bind=0.0.0.0", "--", "tritonserver",
    ]  # fmt: skip
    assert "grpcio==" in " ".join(builder["command"])  # the gateway's dependencies
    assert "--model-control-mode=explicit" in server["command"]
    assert "psutil==" in " ".join(builder["command"])
    assert any("cuda-memory-pool-byte-size" in c for c in server["command"])
    command = " ".join(builder["command"])
    assert "build/render.py --profile gpu" in command and "build_engines.py" in command
    dockerfile = (REPO_ROOT / builder["build"]["dockerfile"]).read_text()
    assert f"FROM {server['image']}" in dockerfile  # builder and server: same TensorRT-LLM
    assert cpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert (REPO_ROOT / cpu["build"]["dockerfile"]).exists()
    assert cpu["profiles"] == ["cpu"]
