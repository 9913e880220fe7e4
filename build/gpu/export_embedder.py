"""Export the sentence encoder's transformer to ONNX for the GPU embedder's TensorRT plan.

    python build/gpu/export_embedder.py --model-path /models/hf/roberta-base --out DIR/model.onnx

Runs on CPU (no GPU needed). The graph takes int32 input_ids / attention_mask [batch, seq] and
gives last_hidden_state [batch, seq, hidden] in float32; tokenising and pooling stay outside
as Triton steps (embedder_tokenize, embedder_pool). Needs the `onnx` package (torch's exporter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.embedder import resolve_model_path  # noqa: E402

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17


def export(model_path: str, out: Path, *, max_length: int = 128) -> Path:
    """Write the ONNX graph to `out`; returns it. int32 inputs: TensorRT's native index type."""
    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(
                input_ids=input_ids.long(), attention_mask=attention_mask.long()
            ).last_hidden_state
            return hidden.float()

    path = resolve_model_path(model_path)
    model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    ids = torch.ones((2, max_length), dtype=torch.int32)
    mask = torch.ones((2, max_length), dtype=torch.int32)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {"batch": 0, "sequence": 1}
    with torch.inference_mode():
        torch.onnx.export(
            Encoder(model),
            (ids, mask),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {v: k for k, v in axes.items()},
                "attention_mask": {v: k for k, v in axes.items()},
                OUTPUT_NAME: {0: "batch", 1: "sequence"},
            },
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="local checkpoint or package:NAME")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    print(export(args.model_path, args.out, max_length=args.max_length))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
