"""Render the Triton model repository for one profile of build/profiles.yaml.

    python build/render.py --profile cpu --out var/repo/cpu [--set defense.allow_seed=false]

Templates are `model_repository/<model>/config.pbtxt.tmpl`; `${name}` placeholders are filled
strictly (an unknown or unfilled placeholder is a build error, never a blank) and every rendered
config is parsed as a Triton ModelConfig protobuf before it is written.

A profile's `overlays` (e.g. `gpu/common`, `gpu/mllm_${mllm_runtime}`) name folders under
model_repository/ whose models replace or add to the base ones; an overlay model without
version folders keeps the base model's code. In a version folder, `NAME.link` holding a
(templated) path becomes a symlink NAME, e.g. a TensorRT plan on the engines volume.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import string
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.core.settings import DefenseSettings  # noqa: E402

PROFILES = REPO_ROOT / "build" / "profiles.yaml"
TEMPLATES = REPO_ROOT / "model_repository"
MLLM_RUNTIMES: tuple[str, ...] = ("trt_engine", "llm_api", "hf")
# Runtimes whose `mllm` is a thin adapter in front of TensorRT-LLM (one instance per sequence).
TRTLLM_RUNTIMES: tuple[str, ...] = ("trt_engine", "llm_api")
DEVICE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


class RenderError(RuntimeError):
    pass


def load_profile(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    profiles = yaml.safe_load(PROFILES.read_text())
    if name not in profiles:
        raise RenderError(f"unknown profile {name!r}; known: {', '.join(profiles)}")
    profile = json.loads(json.dumps(profiles[name]))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RenderError(f"--set takes KEY=VALUE, got {item!r}")
        node = profile
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise RenderError(f"--set {key}: no section {part!r} in profile {name!r}")
            node = node[part]
        if leaf not in node:
            raise RenderError(f"--set {key}: no setting {leaf!r} in profile {name!r}")
        node[leaf] = yaml.safe_load(value)
    return profile


def _flag(section: dict[str, Any], key: str) -> bool:
    """A true/false setting (absent: false); anything else is a mistake, not a truth value."""
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise RenderError(f"{key} must be true or false, got {value!r}")
    return value


def _resolve_path(spec: str) -> str:
    if spec.startswith("package:"):
        return spec
    path = Path(spec)
    return str(path if path.is_absolute() else (REPO_ROOT / path).resolve())


def _pbtxt_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parameters_block(params: dict[str, str]) -> str:
    lines = []
    for key, value in sorted(params.items()):
        k, v = _pbtxt_string(key), _pbtxt_string(value)
        lines.append(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}')
    return "\n".join(lines)


def _flat_values(profile: dict[str, Any]) -> dict[str, Any]:
    """Every scalar setting as `<section>_<key>` (or `<key>` at the top), for templates of
    profile-specific models; the explicit names in `substitutions` take precedence."""
    flat: dict[str, Any] = {}
    for key, value in profile.items():
        if isinstance(value, dict):
            for sub, leaf in value.items():
                if not isinstance(leaf, (dict, list)):
                    flat[f"{key}_{sub}"] = leaf
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def _gpu_values(profile: dict[str, Any], defense: DefenseSettings) -> dict[str, Any]:
    """Derived engine sizes for profiles with a TensorRT-LLM `mllm.runtime`, and the checks
    that would otherwise only fail on the GPU machine."""
    mllm, steps = profile["mllm"], profile["steps"]
    runtime = mllm["runtime"]
    if runtime not in MLLM_RUNTIMES:
        raise RenderError(f"mllm.runtime must be one of {MLLM_RUNTIMES}, got {runtime!r}")
    if runtime == "trt_engine" and mllm["family"] != "llava":
        raise RenderError(
            f"mllm.family {mllm['family']!r} has no TensorRT engine path here; use "
            "mllm.runtime=llm_api (the PyTorch backend), as for qwen2_5_vl"
        )
    if runtime in TRTLLM_RUNTIMES and steps.get("generate_fanout", "requests") != "requests":
        raise RenderError(
            "steps.generate_fanout must be 'requests' on GPU: TensorRT-LLM takes one prompt "
            "table per request, so the N noisy copies must be N requests"
        )
    batch, visual = int(mllm["max_batch_size"]), int(mllm["num_visual_features"])
    need = defense.num_samples * int(mllm["expected_concurrency"])
    if batch < need:
        raise RenderError(
            f"mllm.max_batch_size {batch} < defense.num_samples x mllm.expected_concurrency "
            f"= {need}: the engine could not hold every copy of every request in flight"
        )
    if int(steps["generate_instances"]) < int(mllm["expected_concurrency"]):
        raise RenderError(
            f"steps.generate_instances {steps['generate_instances']} < mllm.expected_concurrency "
            f"{mllm['expected_concurrency']}: each generate instance keeps one defended request "
            "in flight, so the engine would never see the concurrency it was sized for"
        )
    if runtime in TRTLLM_RUNTIMES and int(mllm["instances"]) < batch:
        raise RenderError(
            f"mllm.instances {mllm['instances']} < mllm.max_batch_size {batch}: the mllm adapter "
            "is not decoupled, so an instance is held until its request's sequence finishes; "
            "with fewer instances than engine slots, requests wait instead of joining the "
            "in-flight batch"
        )
    if batch < defense.num_samples_max:
        raise RenderError("mllm.max_batch_size must be >= defense.num_samples_max")
    if int(mllm["max_output_len"]) < defense.max_new_tokens_limit:
        raise RenderError("mllm.max_output_len must be >= defense.max_new_tokens_limit")
    max_input_len = int(mllm["max_text_len"]) + visual
    return {
        "mllm_max_multimodal_len": batch * visual,
        "mllm_max_input_len": max_input_len,
        "mllm_max_seq_len": max_input_len + int(mllm["max_output_len"]),
        "engines_dir": profile["engines_dir"],
        "defense_instance_kind": _instance_kind(profile, "device"),
        "model_instance_kind": _instance_kind(profile, "model_device"),
    }


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def _check_thread_settings(name: str, section: dict[str, Any]) -> None:
    """Refused here rather than at model load, where a bad value stops the server starting."""
    for key, least in (("threads", 0), ("threads_alone", 0), ("threads_alone_min_rows", 1)):
        if key not in section:
            continue
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise RenderError(f"{name}.{key} must be a whole number >= {least}, got {value!r}")


def _torch_dtype(name: Any) -> str:
    """mllm.dtype, checked here so a typo fails the render, not the model load."""
    if name not in TORCH_DTYPES:
        raise RenderError(f"mllm.dtype must be one of {TORCH_DTYPES}, got {name!r}")
    return str(name)


def _instance_kind(profile: dict[str, Any], key: str) -> str:
    """KIND_GPU or KIND_CPU for a device setting, so one template serves either placement."""
    device = profile.get(key, "gpu")
    if device not in DEVICE_KINDS:
        raise RenderError(f"{key} must be one of {sorted(DEVICE_KINDS)}, got {device!r}")
    return DEVICE_KINDS[device]


def check_backends(configs: dict[str, Any], backends: list[str]) -> list[str]:
    """Models whose backend (or platform) the pinned container does not ship: they would
    fail at load time on the GPU host, so they fail the render here instead."""
    problems = []
    for name, config in sorted(configs.items()):
        needed = config.backend or config.platform
        if needed not in backends:
            problems.append(
                f"model {name!r} needs {needed!r}, which the pinned container does not ship "
                f"(gpu.container.backends: {', '.join(backends)})"
            )
    return problems


DENOISE_OVERLAY = "denoise"
# The defended image endpoint as one Python model (smoothguard_bls), for benchmarks.
SINGLE_MODEL_OVERLAY = "bls"
# The ensemble step that puts the denoiser between noise and generate (smoothguard's template).
DENOISE_STEP = """
    {
      model_name: "denoise"
      model_version: -1
      input_map { key: "PIXEL_VALUES" value: "noisy_pixel_values" }
      input_map { key: "OPTIONS" value: "options" }
      output_map { key: "PIXEL_VALUES" value: "denoised_pixel_values" }
    },"""


def _denoiser_path(profile: dict[str, Any]) -> str:
    return str(profile.get("denoiser", {}).get("model_path", "") or "")


def _denoiser_values(profile: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's wiring with or without the denoise step, and the step's settings."""
    section = profile.get("denoiser", {})
    path = _denoiser_path(profile)
    resolved = _resolve_path(path) if path else ""
    if resolved and not (Path(resolved) / "config.json").is_file():
        # Caught here rather than as a model that fails to load on the serving host.
        raise RenderError(f"denoiser.model_path {path!r}: no denoiser checkpoint (config.json)")
    return {
        "denoise_step": DENOISE_STEP if path else "",
        "generate_pixel_values": "denoised_pixel_values" if path else "noisy_pixel_values",
        "denoiser_path": resolved,
        "denoiser_instances": section.get("instances", 1),
        "denoiser_threads": section.get("threads", 1),
    }


def substitutions(profile: dict[str, Any]) -> dict[str, str]:
    defense = DefenseSettings.from_profile(profile["defense"])
    mllm, embedder, steps = profile["mllm"], profile["embedder"], profile["steps"]
    values: dict[str, Any] = _flat_values(profile)
    if "runtime" in mllm:
        values.update(_gpu_values(profile, defense))
    values |= {
        "device": profile["device"],
        "defense_parameters": parameters_block(defense.to_parameters()),
        "mllm_path": _resolve_path(mllm["model_path"]),
        "mllm_image_size": int(mllm.get("image_size", 0) or 0),
        "mllm_dtype": _torch_dtype(mllm.get("dtype", "float32")),
        "mllm_max_batch_size": mllm["max_batch_size"],
        "mllm_instances": mllm["instances"],
        "mllm_max_queue_delay_us": mllm["max_queue_delay_us"],
        "mllm_threads": mllm["threads"],
        "embedder_path": _resolve_path(embedder["model_path"]),
        "embedder_max_batch_size": embedder["max_batch_size"],
        "embedder_instances": embedder["instances"],
        "embedder_max_queue_delay_us": embedder["max_queue_delay_us"],
        "embedder_threads": embedder["threads"],
        "noise_instances": steps["noise_instances"],
        "generate_instances": steps["generate_instances"],
        "generate_timeout_s": steps["generate_timeout_s"],
        "generate_fanout": steps.get("generate_fanout", "requests"),
        "aggregate_instances": steps["aggregate_instances"],
        # Only worth it where seeds are allowed: unseeded requests never hit (fresh noise).
        "generate_response_cache": "true"
        if _flag(steps, "response_cache") and defense.allow_seed
        else "false",
    }
    values |= _denoiser_values(profile)
    # Shipping an adaptive request's first round only saves the noise step most of its draws
    # and copies on CPU; on GPU the copies stay on the device (DLPack) and cost little, and
    # a denoise step needs all N in one tensor.
    values["adaptive_first_round_only"] = str(
        profile["device"] == "cpu" and not values["denoiser_path"]
    ).lower()
    if SINGLE_MODEL_OVERLAY in profile.get("overlays", []) and values["denoiser_path"]:
        raise RenderError(
            f"overlay {SINGLE_MODEL_OVERLAY!r} (smoothguard_bls) has no denoise step: serve "
            "denoised smoothing by the ensemble (drop the overlay or denoiser.model_path)"
        )
    if "audio" in profile:
        values["audio_mllm_path"] = _resolve_path(profile["audio"]["model_path"])
    for section in ("mllm", "audio"):
        _check_thread_settings(section, profile.get(section, {}))
    if values["generate_fanout"] not in ("requests", "batch"):
        raise RenderError("steps.generate_fanout must be 'requests' or 'batch'")
    # A certify request's candidates go to the embedder as one batch too: 1 + n0 + n rows.
    rows = max(defense.num_samples_max, defense.certify_draws if defense.allow_certify else 0)
    if int(embedder["max_batch_size"]) < rows:
        raise RenderError(
            f"embedder.max_batch_size {embedder['max_batch_size']} < {rows}: the ensemble sends "
            "all of a request's candidates to the embedder as one batch (defense.num_samples_max"
            ", and while allow_certify, 1 + certify_selection_draws + certify_estimation_draws)"
        )
    return {k: str(v) for k, v in values.items()}


def render_template(text: str, values: dict[str, str], source: Path) -> str:
    try:
        rendered = string.Template(text).substitute(values)
    except KeyError as exc:
        raise RenderError(f"{source}: placeholder ${{{exc.args[0]}}} has no value") from exc
    except ValueError as exc:
        raise RenderError(f"{source}: malformed placeholder: {exc}") from exc
    return rendered


def parse_model_config(text: str, source: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RenderError(f"{source}: not a valid Triton ModelConfig: {exc}") from exc


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def model_sources(profile: dict[str, Any], values: dict[str, str]) -> dict[str, tuple[Path, Path]]:
    """Model name -> (its template, the folder whose version folders hold its code)."""
    base = {t.parent.name: t for t in sorted(TEMPLATES.glob("*/config.pbtxt.tmpl"))}
    models = {name: (t, t.parent) for name, t in base.items()}
    # The denoise step is there only where a denoiser is configured (denoised smoothing).
    extra = [DENOISE_OVERLAY] if _denoiser_path(profile) else []
    for spec in [*profile.get("overlays", []), *extra]:
        overlay = render_template(str(spec), values, PROFILES)
        folder = (TEMPLATES / overlay).resolve()
        if TEMPLATES.resolve() not in folder.parents or not folder.is_dir():
            raise RenderError(f"overlay {overlay!r} is not a folder under {TEMPLATES}")
        for template in sorted(folder.glob("*/config.pbtxt.tmpl")):
            name = template.parent.name
            code = template.parent
            if not _version_dirs(code) and name in base:
                code = base[name].parent
            models[name] = (template, code)
    return models


def _copy_version(source: Path, target: Path, values: dict[str, str]) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.link"))
    for link in sorted(source.glob("*.link")):
        destination = render_template(link.read_text().strip(), values, link)
        (target / link.stem).symlink_to(destination)


PATH_PARAMETER = re.compile(
    r'(parameters \{ key: "(?P<key>\w*_path)" value: \{ string_value: ")(?P<value>/[^"]*)(")'
)


def localise_paths(config: str, model_dir: Path) -> str:
    """A Python model's absolute `*_path` parameters become links inside its own folder, so
    the config that Triton serves to any client names `mllm_path`, not where this host keeps
    its files (smoothguard_triton.glue.model_parameters resolves them back)."""
    if 'backend: "python"' not in config:
        return config  # other backends (TensorRT-LLM) read their paths themselves

    def link(match: re.Match[str]) -> str:
        key, value = match["key"], match["value"]
        (model_dir / key).symlink_to(value, target_is_directory=True)
        return f"{match[1]}{key}{match[4]}"

    return PATH_PARAMETER.sub(link, config)


def render(profile_name: str, out: Path, overrides: list[str] | None = None) -> Path:
    profile = load_profile(profile_name, overrides)
    values = substitutions(profile)
    staging = out.with_name(out.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    parsed = {}
    for name, (template, code) in sorted(model_sources(profile, values).items()):
        rendered = render_template(template.read_text(), values, template)
        parsed[name] = parse_model_config(rendered, template)
        target = staging / name
        target.mkdir()
        (target / "config.pbtxt").write_text(localise_paths(rendered, target))
        for version_dir in _version_dirs(code):
            _copy_version(version_dir, target / version_dir.name, values)
        # Git keeps no empty folders; an ensemble still needs its (empty) version folder.
        (target / "1").mkdir(exist_ok=True)
    (staging / "profile.json").write_text(json.dumps(profile, indent=2))
    from check_ensemble import check_repository

    problems = check_repository(staging)
    if problems:
        raise RenderError("ensemble does not chain:\n  " + "\n  ".join(problems))
    missing = (
        check_backends(parsed, profile["container"]["backends"]) if "container" in profile else []
    )
    if missing:
        raise RenderError("backend missing from the container:\n  " + "\n  ".join(missing))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: var/repo/<profile>")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one profile setting",
    )
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "var" / "repo" / args.profile
    try:
        path = render(args.profile, out.resolve(), args.overrides)
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
