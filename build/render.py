"""Render the Triton model repository for one profile of build/profiles.yaml.

    python build/render.py --profile cpu --out var/repo/cpu [--set defense.allow_seed=false]

Templates are `model_repository/<model>/config.pbtxt.tmpl`; `${name}` placeholders are filled
strictly (an unknown or unfilled placeholder is a build error, never a blank) and every rendered
config is parsed as a Triton ModelConfig protobuf before it is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.settings import DefenseSettings  # noqa: E402

PROFILES = REPO_ROOT / "build" / "profiles.yaml"
TEMPLATES = REPO_ROOT / "model_repository"


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


def substitutions(profile: dict[str, Any]) -> dict[str, str]:
    defense = DefenseSettings(**profile["defense"])
    mllm, embedder, steps = profile["mllm"], profile["embedder"], profile["steps"]
    values: dict[str, Any] = {
        "device": profile["device"],
        "defense_parameters": parameters_block(defense.to_parameters()),
        "mllm_path": _resolve_path(mllm["model_path"]),
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
        "aggregate_instances": steps["aggregate_instances"],
    }
    if int(embedder["max_batch_size"]) < defense.num_samples_max:
        raise RenderError(
            "embedder.max_batch_size must be >= defense.num_samples_max: the ensemble sends all "
            "N candidates to the embedder as one batch"
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


def render(profile_name: str, out: Path, overrides: list[str] | None = None) -> Path:
    profile = load_profile(profile_name, overrides)
    values = substitutions(profile)
    staging = out.with_name(out.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for template in sorted(TEMPLATES.glob("*/config.pbtxt.tmpl")):
        model_dir = template.parent
        rendered = render_template(template.read_text(), values, template)
        parse_model_config(rendered, template)
        target = staging / model_dir.name
        target.mkdir()
        (target / "config.pbtxt").write_text(rendered)
        for version_dir in model_dir.iterdir():
            if version_dir.is_dir() and version_dir.name.isdigit():
                shutil.copytree(
                    version_dir,
                    target / version_dir.name,
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
        # Git keeps no empty folders; an ensemble still needs its (empty) version folder.
        (target / "1").mkdir(exist_ok=True)
    (staging / "profile.json").write_text(json.dumps(profile, indent=2))
    from check_ensemble import check_repository

    problems = check_repository(staging)
    if problems:
        raise RenderError("ensemble does not chain:\n  " + "\n  ".join(problems))
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
