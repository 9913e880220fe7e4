"""Embedder step 1 on GPU: tokenise the candidate answers for the TensorRT encoder.

Padding is to a fixed max_length, so every request has the same shape and the encoder's
dynamic batcher can merge requests (it only batches equal shapes).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.embedder import resolve_model_path
from smoothguard.settings import InvalidRequest
from smoothguard_triton.glue import limit_threads, model_parameters, required_input, respond_each


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        params = model_parameters(args)
        limit_threads(params)
        path = resolve_model_path(params["model_path"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.max_length = int(params["max_length"])
        self.max_chars = int(params.get("max_text_chars", "4096"))

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        texts = [self._decode(t) for t in required_input(request, "TEXT").reshape(-1)]
        batch = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return [
            pb_utils.Tensor("INPUT_IDS", batch["input_ids"].astype(np.int32)),
            pb_utils.Tensor("ATTENTION_MASK", batch["attention_mask"].astype(np.int32)),
        ]

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
