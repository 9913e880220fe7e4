"""Build the TensorRT-LLM engines the gpu profile serves, from local Hugging Face checkpoints.

    python3 build/gpu/build_engines.py --profile gpu [--out /models/engines] [--dry-run]

mllm.runtime trt_engine (LLaVA-1.5): convert_checkpoint -> trtllm-build (in-flight batching,
paged KV cache, max_multimodal_len = max_batch_size x 576) -> the vision engine. llm_api and
hf: nothing to build (the LLM API and transformers load the checkpoint at start-up). The
embedder needs no build: it runs in torch. Run inside the pinned container (profiles.yaml
gpu.container), on the GPU type that will serve: engines only load in the TensorRT-LLM
version and on the GPU architecture that built them. Where the image keeps TensorRT-LLM's
examples and which tools are on PATH come from gpu.container too; --dry-run prints the
commands and checks nothing on disk.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BUILD = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUILD))

from render import RenderError, load_profile  # noqa: E402

MAX_NUM_TOKENS = 16384  # tokens per engine step: bounds activation memory, not batch size
# The example scripts used, relative to gpu.container.trtllm_examples (TensorRT-LLM >= 0.19).
CONVERT_LLAMA = "models/core/llama/convert_checkpoint.py"
BUILD_VISION = "models/core/multimodal/build_multimodal_engine.py"


def llava_commands(profile: dict[str, Any], out: Path, work: Path) -> list[list[str]]:
    """convert_checkpoint, trtllm-build and the vision engine for LLaVA-1.5."""
    mllm, examples = profile["mllm"], profile["container"]["trtllm_examples"]
    batch, visual = int(mllm["max_batch_size"]), int(mllm["num_visual_features"])
    # The adapter's ids fit this exactly, BOS included (adapters.trtllm.PromptTableLayout).
    max_input = int(mllm["max_text_len"]) + visual
    dtype = str(mllm["dtype"])
    checkpoint = work / "llava" / "checkpoint"
    return [
        [
            "python3", f"{examples}/{CONVERT_LLAMA}",
            "--model_dir", str(mllm["model_path"]),
            "--output_dir", str(checkpoint),
            "--dtype", dtype,
        ],
        [
            "trtllm-build",
            "--checkpoint_dir", str(checkpoint),
            "--output_dir", str(out / "llava" / "llm"),
            "--gemm_plugin", dtype,
            "--gpt_attention_plugin", dtype,
            "--remove_input_padding", "enable",
            "--paged_kv_cache", "enable",
            "--context_fmha", "enable",
            "--max_beam_width", "1",
            "--max_batch_size", str(batch),
            "--max_input_len", str(max_input),
            "--max_seq_len", str(max_input + int(mllm["max_output_len"])),
            "--max_num_tokens", str(MAX_NUM_TOKENS),
            # One image = `visual` rows of prompt table per sequence in the batch.
            "--max_multimodal_len", str(batch * visual),
        ],
        [
            "python3", f"{examples}/{BUILD_VISION}",
            "--model_type", "llava",
            "--model_path", str(mllm["model_path"]),
            "--output_dir", str(out / "llava" / "vision"),
            "--max_batch_size", str(batch),
        ],
    ]  # fmt: skip


def build_commands(profile: dict[str, Any], out: Path, work: Path) -> list[list[str]]:
    runtime = profile["mllm"].get("runtime")
    if runtime is None:
        raise RenderError("this profile has no mllm.runtime: nothing to build for a GPU")
    return llava_commands(profile, out, work) if runtime == "trt_engine" else []


def check_image(profile: dict[str, Any], commands: list[list[str]]) -> None:
    """Fail before the first step, naming what the image lacks, instead of halfway through."""
    container = profile["container"]
    examples = Path(container["trtllm_examples"])
    for script in (CONVERT_LLAMA, BUILD_VISION):
        if commands and not (examples / script).is_file():
            raise RenderError(
                f"{examples / script} is missing: gpu.container.trtllm_examples must point at "
                f"TensorRT-LLM {container['tensorrt_llm']}'s examples in {container['image']}"
            )
    for tool in sorted({c[0] for c in commands}):
        if shutil.which(tool) is None:
            raise RenderError(f"{tool} is not on PATH in this image")
    for section in ("mllm", "embedder"):
        spec = str(profile[section]["model_path"])
        if not spec.startswith("package:") and not (Path(spec) / "config.json").exists():
            raise RenderError(f"{section}.model_path {spec}: no local Hugging Face checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--out", type=Path, default=None, help="default: profile engines_dir")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smoothguard-build"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        out = args.out or Path(profile["engines_dir"])
        commands = build_commands(profile, out, args.work)
        if not args.dry_run:
            check_image(profile, commands)
    except RenderError as exc:
        print(f"build_engines: error: {exc}", file=sys.stderr)
        return 2
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        info = {"profile": args.profile, "container": profile["container"], "commands": commands}
        (out / "BUILD_INFO.json").write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
