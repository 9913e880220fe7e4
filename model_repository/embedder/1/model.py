"""Triton adapter for the sentence encoder: all texts of all batched requests in one pass."""

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.embedder import SentenceEncoder
from smoothguard.settings import InvalidRequest
from smoothguard_triton.glue import error_response, limit_threads, model_parameters, required_input


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.encoder = SentenceEncoder(params["model_path"])
        self.max_chars = int(params.get("max_text_chars", "4096"))

    def execute(self, requests):
        texts, spans, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                raw = required_input(request, "TEXT").reshape(-1)
                batch = [self._decode(t) for t in raw]
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

    def _decode(self, raw):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"TEXT is not valid UTF-8: {exc}") from exc
        if len(text) > self.max_chars:
            raise InvalidRequest(
                f"TEXT has {len(text)} characters, over the limit of {self.max_chars}"
            )
        return text
