"""Triton adapter for the sentence encoder on the GPU: all texts of all batched requests in one
torch pass on the model's device, with the cpu adapter's request checks.

The encoder is smoothguard.embedder.SentenceEncoder (same tokenising, pooling and answer
cache); CudaSentenceEncoder only places it on the device, until SentenceEncoder takes a
`device` itself.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.embedder import SentenceEncoder
from smoothguard.validation import DEFAULT_MAX_TEXT_CHARS, decode_texts
from smoothguard_triton.glue import error_response, limit_threads, model_parameters, required_input


class CudaSentenceEncoder(SentenceEncoder):
    """SentenceEncoder with its weights on `device` ("cuda" or "cpu"); rows come back on the
    host (N x D floats, a few KB: the aggregate step selects on the host below 192 points)."""

    def __init__(self, model_path, *, device, max_length):
        super().__init__(model_path, max_length=max_length)
        self.device = device
        self.model.to(device)

    def _embed(self, texts):
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        device = "cuda" if params.get("device", "gpu") == "gpu" else "cpu"
        self.encoder = CudaSentenceEncoder(
            params["model_path"], device=device, max_length=int(params.get("max_length", "128"))
        )
        self.max_chars = int(params.get("max_text_chars", DEFAULT_MAX_TEXT_CHARS))
        self.max_rows = max(1, int(json.loads(args["model_config"]).get("max_batch_size", 1)))

    def execute(self, requests):
        texts, spans, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                batch = decode_texts(
                    required_input(request, "TEXT"),
                    name="TEXT",
                    max_chars=self.max_chars,
                    max_rows=self.max_rows,
                )
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                responses[index] = error_response(exc)
                continue
            spans.append((index, len(texts), len(texts) + len(batch)))
            texts.extend(batch)
        try:
            embeddings = self.encoder.encode(texts)
        except Exception as exc:  # noqa: BLE001
            return [r if r is not None else error_response(exc) for r in responses]
        for index, start, stop in spans:
            out = np.ascontiguousarray(embeddings[start:stop], dtype=np.float32)
            responses[index] = pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", out)])
        return responses
