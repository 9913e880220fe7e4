"""The gpu profile, checked on a machine without a GPU: rendered configs parse as Triton
ModelConfig protobufs, ensembles chain, only what the pinned container ships is used (its
backends, tool paths and packages, recorded once in profiles.yaml gpu.container), the
engine-build commands carry the right flags, and docker-compose.yml names what it must."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from check_ensemble import check_repository
from render import REPO_ROOT, RenderError, load_profile, parse_model_config, render

sys.path.insert(0, str(REPO_ROOT / "build" / "gpu"))

from build_engines import build_commands, check_image
from install_pydeps import pip_command, plan

GPU_COMMON = {"smoothguard", "noise", "generate", "aggregate", "mllm", "embedder"}
QWEN = ["mllm.runtime=llm_api", "mllm.family=qwen2_5_vl", "mllm.image_size=448"]
HF = ["mllm.runtime=hf", "mllm.model_path=models/synthvlm", "mllm.instances=1"]
RUNTIMES = {"trt_engine": [], "llm_api": QWEN, "hf": HF}
COMPOSE = REPO_ROOT / "docker-compose.yml"
BUILDER = REPO_ROOT / "deploy" / "docker" / "Dockerfile.gpu-builder"
GPU_MODELS = REPO_ROOT / "model_repository" / "gpu"


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render("gpu", tmp_path_factory.mktemp("gpu") / "repo")


def configs(repo: Path) -> dict[str, object]:
    return {
        p.parent.name: parse_model_config(p.read_text(), p)
        for p in sorted(repo.glob("*/config.pbtxt"))
    }


def container() -> dict[str, object]:
    return load_profile("gpu")["container"]


def test_llava_engine_repository(gpu_repo: Path) -> None:
    parsed = configs(gpu_repo)
    assert set(parsed) == GPU_COMMON | {"mllm_vision", "mllm_llm"}
    assert all(c.name == n for n, c in parsed.items())
    llm = parsed["mllm_llm"]
    assert llm.backend == "tensorrtllm"
    assert llm.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    assert llm.parameters["gpt_model_path"].string_value == "/models/engines/llava/llm"
    vision = parsed["mllm_vision"]
    assert vision.backend == "python"
    assert vision.parameters["engine_dir"].string_value == "/models/engines/llava/vision"
    assert (gpu_repo / "mllm_vision" / "1" / "model.py").exists()
    assert parsed["embedder"].backend == "python"
    assert parsed["embedder"].instance_group[0].kind == 1  # KIND_GPU
    assert parsed["generate"].parameters["fanout"].string_value == "requests"
    assert parsed["noise"].instance_group[0].kind == 1  # KIND_GPU
    for path in gpu_repo.rglob("*"):
        if path.name == "config.pbtxt":
            assert "${" not in path.read_text()
    assert (gpu_repo / "aggregate" / "1" / "model.py").exists()  # code from the base model


def test_qwen_llm_api_repository(tmp_path: Path) -> None:
    repo = render("gpu", tmp_path / "repo", QWEN)
    parsed = configs(repo)
    assert set(parsed) == GPU_COMMON | {"mllm_llm"}
    assert parsed["mllm_llm"].model_transaction_policy.decoupled
    assert parsed["noise"].parameters["image_size"].string_value == "448"
    assert check_repository(repo) == []


def test_hf_runtime_repository(tmp_path: Path) -> None:
    """What build/gpu_smoke.py serves: the cpu adapter's code on model_device."""
    repo = render("gpu", tmp_path / "repo", [*HF, "model_device=cpu", "device=cpu"])
    parsed = configs(repo)
    assert set(parsed) == GPU_COMMON
    assert (repo / "mllm" / "1" / "model.py").read_text() == (
        REPO_ROOT / "model_repository" / "mllm" / "1" / "model.py"
    ).read_text()
    for name in ("mllm", "embedder", "noise", "aggregate"):
        assert parsed[name].instance_group[0].kind == 2, name  # KIND_CPU
    assert parsed["mllm"].parameters["device"].string_value == "cpu"


def test_every_ensemble_chains(gpu_repo: Path) -> None:
    assert check_repository(gpu_repo) == []


# --- 1. backends: only what the pinned container ships ------------------------------------


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_repository_uses_only_the_containers_backends(runtime: str, tmp_path: Path) -> None:
    """The -trtllm-python-py3 images ship the ensemble, tensorrtllm and python backends only:
    a tensorrt_plan model (the vision engine, the embedder's plan) fails at load there."""
    backends = set(container()["backends"])
    assert backends == {"ensemble", "python", "tensorrtllm"}
    for name, config in configs(render("gpu", tmp_path / "repo", RUNTIMES[runtime])).items():
        assert (config.backend or config.platform) in backends, name


def test_gpu_templates_name_no_other_backend() -> None:
    """Every template under model_repository/gpu, rendered or not, for the same reason."""
    backends = set(container()["backends"])
    for template in GPU_MODELS.rglob("config.pbtxt.tmpl"):
        text = template.read_text()
        named = set(re.findall(r'^(?:backend|platform): "([^"]+)"', text, re.M))
        assert named and named <= backends, template
    assert not list(GPU_MODELS.rglob("*.plan.link"))


def test_render_refuses_a_backend_the_container_lacks(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=r"'tensorrtllm'.*not ship"):
        render("gpu", tmp_path / "repo", ["container.backends=[ensemble, python]"])


# --- 2, 3. the image's layout: examples and tools from gpu.container -----------------------


def _commands(overrides: list[str] | None = None) -> list[list[str]]:
    return build_commands(load_profile("gpu", overrides), Path("/e"), Path("/w"))


def test_examples_come_from_the_container_record() -> None:
    """The examples are at /app/examples (upstream's Dockerfile), not /app/tensorrt_llm/."""
    examples = container()["trtllm_examples"]
    assert examples == "/app/examples"
    convert, _, vision = _commands()
    assert convert[1] == f"{examples}/models/core/llama/convert_checkpoint.py"
    assert vision[1] == f"{examples}/models/core/multimodal/build_multimodal_engine.py"
    source = (REPO_ROOT / "build" / "gpu" / "build_engines.py").read_text()
    assert "/app" not in source  # the layout is recorded once, in profiles.yaml
    moved = _commands(["container.trtllm_examples=/opt/ex"])
    assert moved[0][1].startswith("/opt/ex/")


def test_builder_image_agrees_with_the_container_record() -> None:
    dockerfile = BUILDER.read_text()
    record = container()
    assert f"FROM {record['image']}\n" in dockerfile
    assert f"ARG TENSORRT_LLM_VERSION={record['tensorrt_llm']}\n" in dockerfile
    assert f"ARG TRTLLM_EXAMPLES={record['trtllm_examples']}\n" in dockerfile
    # Our sources stay out of the image's /app (its examples and scripts live there).
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)
    assert workdir and all(not record["trtllm_examples"].startswith(w + "/") for w in workdir)


def test_check_image_names_missing_examples(tmp_path: Path) -> None:
    profile = load_profile("gpu", [f"container.trtllm_examples={tmp_path}"])
    with pytest.raises(RenderError, match=r"convert_checkpoint\.py is missing"):
        check_image(profile, build_commands(profile, Path("/e"), Path("/w")))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_engine_build_calls_only_tools_on_the_images_path(runtime: str) -> None:
    """trtexec is not on PATH in the image (TensorRT sits under /usr/local/tensorrt)."""
    tools = set(container()["path_tools"])
    assert "trtexec" not in tools
    for command in _commands(RUNTIMES[runtime]):
        assert command[0] in tools, command
        assert not any("trtexec" in part for part in command)


def test_llava_engine_build_flags() -> None:
    profile = load_profile("gpu")
    convert, build, vision = _commands()
    assert _flags(convert)["--model_dir"] == profile["mllm"]["model_path"]
    flags = _flags(build)
    assert build[0] == "trtllm-build"
    batch = int(flags["--max_batch_size"])
    assert batch == profile["mllm"]["max_batch_size"]
    assert int(flags["--max_multimodal_len"]) == batch * 576
    assert flags["--paged_kv_cache"] == "enable"
    assert flags["--remove_input_padding"] == "enable"  # needed for in-flight batching
    assert flags["--gpt_attention_plugin"] == "float16"
    assert int(flags["--max_input_len"]) == profile["mllm"]["max_text_len"] + 576
    assert int(flags["--max_seq_len"]) > int(flags["--max_input_len"])
    assert flags["--output_dir"] == "/e/llava/llm"
    assert _flags(vision)["--model_type"] == "llava"
    assert int(_flags(vision)["--max_batch_size"]) == batch
    assert _flags(vision)["--output_dir"] == "/e/llava/vision"


def _flags(command: list[str]) -> dict[str, str]:
    out, it = {}, iter(command[1:])
    for token in it:
        if token.startswith("--") and "=" in token:
            key, _, value = token.partition("=")
            out[key] = value
        elif token.startswith("--"):
            out[token] = next(it)
    return out


def test_multimodal_len_follows_batch() -> None:
    build = _commands(["mllm.max_batch_size=96", "mllm.instances=96"])[1]
    assert int(_flags(build)["--max_multimodal_len"]) == 96 * 576


def test_only_llava_has_engines_to_build() -> None:
    assert _commands(QWEN) == [] and _commands(HF) == []


def test_dry_run_prints_shell_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from build_engines import main

    assert main(["--dry-run", "--out", "/e"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(line)[0] for line in lines] == ["python3", "trtllm-build", "python3"]


# --- 4. packages beside the image: pinned, --no-deps, never numpy -------------------------


def test_pydeps_never_shadow_the_images_numpy() -> None:
    pins = container()["pydeps"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", p) for p in pins), pins
    assert not any(p.lower().startswith("numpy") for p in pins)
    install, kept = plan(pins, {"grpcio": "1.70.0", "pillow": "11.0.0"})
    assert kept == {"grpcio": "1.70.0", "pillow": "11.0.0"}  # the image's own stay
    assert not any(p.startswith(("grpcio==", "pillow==")) for p in install)
    command = pip_command(Path("/models/pydeps"), install)
    assert "--no-deps" in command and command[command.index("--target") + 1] == "/models/pydeps"
    with pytest.raises(RenderError, match="numpy must come from the image"):
        plan([*pins, "numpy==2.2.6"], {})
    with pytest.raises(RenderError, match="pinned exactly"):
        plan(["psutil>=7"], {})


def test_compose_and_job_install_pydeps_one_way() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    script = compose["services"]["engine-build"]["command"][-1]
    job_file = REPO_ROOT / "deploy" / "overlays" / "gpu" / "engine-build-job.yaml"
    job = yaml.safe_load(job_file.read_text())
    job_script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    for text in (script, job_script):
        assert "python3 build/gpu/install_pydeps.py --target /models/pydeps" in text
        assert "pip install" not in text


# --- 5. the mllm adapters: one instance per engine slot -----------------------------------


@pytest.mark.parametrize("runtime", ["trt_engine", "llm_api"])
def test_mllm_adapter_never_holds_other_requests(runtime: str, tmp_path: Path) -> None:
    """A non-decoupled Python instance is held until every sequence of its batch ends: with
    one instance (or a dynamic batcher gathering requests into one execute) requests wait
    instead of joining the in-flight batch."""
    profile = load_profile("gpu", RUNTIMES[runtime])
    mllm = configs(render("gpu", tmp_path / "repo", RUNTIMES[runtime]))["mllm"]
    assert not mllm.model_transaction_policy.decoupled  # generate and gRPC call it unary
    assert not mllm.HasField("dynamic_batching")
    (group,) = mllm.instance_group
    assert group.count >= profile["mllm"]["max_batch_size"]
    assert group.kind == 2  # KIND_CPU: a tokenizer, no weights, no CUDA context


def test_too_few_adapter_instances_fail_at_render(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="in-flight batch"):
        render("gpu", tmp_path / "repo", ["mllm.instances=1"])


# --- 6. the BOS token counts against max_input_len ----------------------------------------


def test_trt_engine_adapter_leaves_bos_to_the_layout() -> None:
    """The layout budgets BOS inside max_text_len; an adapter that prepends it afterwards
    makes a long prompt one id longer than the engine's max_input_len."""
    source = (GPU_MODELS / "mllm_trt_engine" / "mllm" / "1" / "model.py").read_text()
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "PromptTableLayout"
    ]
    assert len(calls) == 1 and {k.arg for k in calls[0].keywords} == {"bos_id"}
    assert source.count("bos_token_id") == 1


# --- misconfiguration and the rest ---------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mllm.expected_concurrency=100", "expected_concurrency"),
        ("steps.generate_instances=2", "each generate instance keeps one"),
        ("steps.generate_fanout=batch", "one prompt table per request"),
        ("mllm.family=qwen2_5_vl", "no TensorRT engine path"),
        ("mllm.runtime=onnx", "mllm.runtime"),
        ("mllm.max_output_len=16", "max_output_len"),
        ("model_device=tpu", "model_device must be one of"),
    ],
)
def test_gpu_misconfiguration_fails_at_render(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render("gpu", tmp_path / "repo", [override])


def test_gpu_ensemble_mismatch_is_caught(gpu_repo: Path, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(gpu_repo, repo, symlinks=True)
    path = repo / "aggregate" / "config.pbtxt"
    path.write_text(
        path.read_text().replace(
            '"EMBEDDINGS" data_type: TYPE_FP32', '"EMBEDDINGS" data_type: TYPE_FP16'
        )
    )
    assert any("TYPE_FP16" in p for p in check_repository(repo))


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


def test_container_pin_is_in_one_place() -> None:
    record = container()
    tag = record["image"].rsplit(":", 1)[1]
    assert tag.endswith("-trtllm-python-py3")
    assert (tag, record["tensorrt_llm"]) == ("25.08-trtllm-python-py3", "0.21.0")
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["services"]["tritonserver"]["image"] == record["image"]
    kustomization = yaml.safe_load(
        (REPO_ROOT / "deploy" / "overlays" / "gpu" / "kustomization.yaml").read_text()
    )
    server = next(i for i in kustomization["images"] if i["name"] == "smoothguard-server")
    assert f"{server['newName']}:{server['newTag']}" == record["image"]


def test_docker_compose() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
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
        "python3", "-m", "smoothguard.serving.supervisor", "--bind=0.0.0.0", "--", "tritonserver",
    ]  # fmt: skip
    assert "--model-control-mode=explicit" in server["command"]
    pool = load_profile("gpu")["server"]["cuda_memory_pool_byte_size"]
    assert f"--cuda-memory-pool-byte-size=0:{pool}" in server["command"]
    command = builder["command"][-1]
    assert "build/render.py --profile gpu" in command and "build_engines.py" in command
    assert builder["working_dir"] != "/app"
    assert [line.split()[0] for line in command.splitlines() if "build/" in line] == ["python3"] * 3
    dockerfile = (REPO_ROOT / builder["build"]["dockerfile"]).read_text()
    assert f"FROM {server['image']}" in dockerfile  # builder and server: same TensorRT-LLM
    assert cpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert (REPO_ROOT / cpu["build"]["dockerfile"]).exists()
    assert cpu["profiles"] == ["cpu"]
