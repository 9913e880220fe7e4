"""Build everything the gpu profile serves, from local Hugging Face checkpoints (no downloads).

    python build/gpu/build_engines.py --profile gpu [--out /models/engines] [--dry-run]

mllm.runtime trt_engine (LLaVA-1.5): convert_checkpoint -> trtllm-build (in-flight batching,
paged KV cache, max_multimodal_len = max_batch_size x 576) -> the vision engine. mllm.runtime
llm_api (Qwen2.5-VL): nothing to build; the LLM API loads the checkpoint at start-up. Both:
the sentence encoder to ONNX (on CPU) and to a TensorRT plan (trtexec). Run inside the pinned
container (profiles.yaml gpu.container.image), on the GPU type that will serve: engines only
load in the TensorRT-LLM version and on the GPU architecture that built them. --dry-run
prints the commands and checks nothing on disk.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

BUILD = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUILD))

from render import RenderError, load_profile  # noqa: E402

# Where the NGC tritonserver:*-trtllm-python-py3 images keep TensorRT-LLM's example scripts.
DEFAULT_TRTLLM_EXAMPLES = "/app/tensorrt_llm/examples"
MAX_NUM_TOKENS = 16384  # tokens per engine step: bounds activation memory, not batch size


def llava_commands(
    profile: dict[str, Any], out: Path, work: Path, examples: str
) -> list[list[str]]:
    """convert_checkpoint, trtllm-build and the vision engine for LLaVA-1.5."""
    mllm = profile["mllm"]
    batch, visual = int(mllm["max_batch_size"]), int(mllm["num_visual_features"])
    max_input = int(mllm["max_text_len"]) + visual
    dtype = str(mllm["dtype"])
    checkpoint = work / "llava" / "checkpoint"
    return [
        [
            "python3", f"{examples}/models/core/llama/convert_checkpoint.py",
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
            "python3", f"{examples}/models/core/multimodal/build_multimodal_engine.py",
            "--model_type", "llava",
            "--model_path", str(mllm["model_path"]),
            "--output_dir", str(out / "llava" / "vision"),
            "--max_batch_size", str(batch),
        ],
    ]  # fmt: skip


def embedder_commands(profile: dict[str, Any], out: Path) -> list[list[str]]:
    """ONNX export (CPU is enough) and the TensorRT plan for the sentence encoder."""
    emb = profile["embedder"]
    batch, length = int(emb["max_batch_size"]), int(emb["max_length"])
    onnx = out / "embedder" / "model.onnx"

    def shapes(b: int) -> str:
        return f"input_ids:{b}x{length},attention_mask:{b}x{length}"

    return [
        [
            "python3", str(BUILD / "gpu" / "export_embedder.py"),
            "--model-path", str(emb["model_path"]),
            "--out", str(onnx),
            "--max-length", str(length),
        ],
        [
            "trtexec",
            f"--onnx={onnx}",
            f"--saveEngine={out / 'embedder' / 'model.plan'}",
            "--fp16",
            f"--minShapes={shapes(1)}",
            f"--optShapes={shapes(max(1, batch // 2))}",
            f"--maxShapes={shapes(batch)}",
        ],
    ]  # fmt: skip


def build_commands(
    profile: dict[str, Any], out: Path, work: Path, examples: str = DEFAULT_TRTLLM_EXAMPLES
) -> list[list[str]]:
    runtime = profile["mllm"].get("runtime")
    if runtime is None:
        raise RenderError("this profile has no mllm.runtime: nothing to build for a GPU")
    commands = llava_commands(profile, out, work, examples) if runtime == "trt_engine" else []
    return commands + embedder_commands(profile, out)


def _check_inputs(profile: dict[str, Any]) -> None:
    for section in ("mllm", "embedder"):
        spec = str(profile[section]["model_path"])
        if not spec.startswith("package:") and not (Path(spec) / "config.json").exists():
            raise RenderError(f"{section}.model_path {spec}: no local Hugging Face checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--out", type=Path, default=None, help="default: profile engines_dir")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smoothguard-build"))
    parser.add_argument("--trtllm-examples", default=DEFAULT_TRTLLM_EXAMPLES)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        out = args.out or Path(profile["engines_dir"])
        commands = build_commands(profile, out, args.work, args.trtllm_examples)
        if not args.dry_run:
            _check_inputs(profile)
    except RenderError as exc:
        print(f"build_engines: error: {exc}", file=sys.stderr)
        return 2
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    if not args.dry_run:
        info = {"profile": args.profile, "container": profile["container"], "commands": commands}
        (out / "BUILD_INFO.json").write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
