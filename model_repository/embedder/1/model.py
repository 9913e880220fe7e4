"""Triton adapter for the sentence encoder: all texts of all batched requests in one pass, on
the device the profile names (the gpu profile links this same file).

Public like every model here: a request's texts are bounded in number (the config's
max_batch_size, which Triton enforces too) and in length (parameter max_text_chars, checked
on the bytes before decoding), so one call cannot make the encoder tokenise megabytes.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.embedder import SentenceEncoder
from smoothguard.core.validation import DEFAULT_MAX_TEXT_CHARS, decode_texts
from smoothguard_triton.glue import error_response, limit_threads, model_parameters, required_input


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.encoder = SentenceEncoder(
            params["model_path"],
            max_length=int(params.get("max_length", "128")),
            device="cuda" if params.get("device", "cpu") == "gpu" else "cpu",
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
