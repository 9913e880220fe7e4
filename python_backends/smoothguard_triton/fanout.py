"""One round of MLLM calls over BLS: the copies a round asks for, all in flight at once.

Shared by the ensemble's generate step (copies from its input tensor) and the single-model
endpoint (copies drawn a round at a time), so the fan-out, the timeout and how a failed call
is recorded are written once. Fan-out `requests` sends one request per copy (what
TensorRT-LLM's in-flight batching needs: one prompt table per request). Fan-out `batch` sends
the copies as rows of one request (up to the MLLM's max_batch_size each): Triton's dynamic
batcher on CPU then runs them as one batch for certain instead of in the few groups that N
separate arrivals fall into.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.core.sampling import Answer, Failed, SamplingError
from smoothguard.core.settings import RequestOptions
from smoothguard_triton.dlpack import output_tensor

FANOUTS = ("requests", "batch")

# The rows of one call (copy indices, ascending and contiguous) -> their input tensor.
Rows = Callable[[list[int]], Any]


def drawn_rows(name: str, drawn: Any, first: int) -> Rows:
    """Rows for copies drawn for one round (`drawn[0]` is copy `first`), as input tensors
    (shared by DLPack where the copies are on the GPU)."""

    def rows(group: list[int]) -> Any:
        return output_tensor(name, drawn[group[0] - first : group[-1] + 1 - first])

    return rows


class MllmFanout:
    def __init__(self, params: dict[str, str]) -> None:
        self.mllm = params["mllm_model"]
        # Upper bound on one round of MLLM calls, so a stuck or overloaded MLLM fails the
        # request with a clear UNAVAILABLE instead of holding it (and this instance) forever.
        timeout = float(params.get("mllm_timeout_s", "0") or 0)
        self.timeout_s = timeout if timeout > 0 else None
        self.fanout = params.get("fanout", "requests")
        if self.fanout not in FANOUTS:
            raise ValueError(f"fanout must be one of {FANOUTS}, not {self.fanout!r}")
        self.rows_per_call = (
            int(params.get("mllm_max_batch_size", "1")) if self.fanout == "batch" else 1
        )

    async def ask(
        self, rows: Rows, indices: Sequence[int], prompt: np.ndarray, options: RequestOptions
    ) -> list[Answer]:
        """The round's answers in the order of `indices`; a Failed where a call failed.
        `prompt` is the request's PROMPT as a [1, 1] bytes array."""
        indices = list(indices)
        groups = [
            indices[lo : lo + self.rows_per_call]
            for lo in range(0, len(indices), self.rows_per_call)
        ]
        calls = [
            asyncio.ensure_future(
                pb_utils.InferenceRequest(
                    model_name=self.mllm,
                    requested_output_names=["TEXT"],
                    inputs=[
                        rows(group),
                        pb_utils.Tensor("PROMPT", np.repeat(prompt, len(group), axis=0)),
                        pb_utils.Tensor(
                            "MAX_NEW_TOKENS",
                            np.full((len(group), 1), options.max_new_tokens, dtype=np.int32),
                        ),
                    ],
                ).async_exec()
            )
            for group in groups
        ]
        # asyncio.wait, not wait_for: the BLS futures are left to finish on their own (their
        # answers are dropped), since cancelling them is not supported by the Python backend.
        if not calls:
            return []
        _, pending = await asyncio.wait(calls, timeout=self.timeout_s)
        if pending:
            raise SamplingError(
                f"{len(pending)} of {len(calls)} MLLM calls to {self.mllm!r} gave no answer "
                f"within {self.timeout_s:g} s (generate mllm_timeout_s)",
                pb_utils.TritonError.UNAVAILABLE,
            )
        texts: list[Answer] = []
        for group, response in zip(groups, [c.result() for c in calls], strict=True):
            if response.has_error():
                error = response.error()
                texts += [Failed(index, error.message(), error.code()) for index in group]
            else:
                out = pb_utils.get_output_tensor_by_name(response, "TEXT").as_numpy()
                texts += [t.decode("utf-8", errors="replace") for t in out.reshape(-1)]
        return texts
