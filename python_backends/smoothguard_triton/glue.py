"""What every model.py needs from triton_python_backend_utils, in one place.

Only importable inside the Python backend stub, which provides triton_python_backend_utils.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.core.settings import (
    DefenseSettings,
    InvalidRequest,
    RequestOptions,
    parse_options,
    resolve_options,
)
from smoothguard.core.validation import decode_answer_set, decode_prompt, scrub, single_scalar
from smoothguard_triton.metrics import TICKET_KEY

log = logging.getLogger("smoothguard")


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The config's `parameters` as plain strings. A relative `*_path` is a link in the
    model's own folder (build/render.py keeps host paths out of the served config)."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    for key, value in params.items():
        if key.endswith("_path") and value and not value.startswith(("/", "package:")):
            params[key] = os.path.join(args["model_repository"], value)
    return params


def image_size_parameter(params: dict[str, str]) -> int | None:
    """mllm.image_size: the square resolution for checkpoints without one (0/absent: none)."""
    return int(params.get("image_size", "0") or 0) or None


def limit_threads(params: dict[str, str]) -> None:
    """Size this stub's thread pools for a host shared by many model processes.

    numpy's BLAS gets one thread: its idle workers spin-wait between calls, and with a dozen
    stubs on the same cores that spinning is CPU the models lose (measured at concurrency 16
    on 2 cores: the aggregate stub used 4.3 ms CPU per request with OpenBLAS's default pool,
    1.5 ms with one thread; smoothguard 75.6 -> 86.5 req/s). A `threads` parameter sets
    torch's intra-op threads, where the model does real work.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an image without it (e.g. a GPU container) keeps BLAS's own default
        log.warning("threadpoolctl is not installed; numpy's BLAS threads are not limited")
    else:
        threadpool_limits(limits=1, user_api="blas")
    threads = int(params.get("threads", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def optional_input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_tensor(request: Any, name: str) -> Any:
    """The pb_utils.Tensor itself, for handing on to another model without a copy."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidRequest(f"input {name} is required but was not sent")
    return tensor


def required_input(request: Any, name: str) -> np.ndarray:
    return required_tensor(request, name).as_numpy()


# The per-request options every defended endpoint takes, as (input name, keyword).
OPTION_INPUTS: tuple[tuple[str, str], ...] = (
    ("SIGMA", "sigma"),
    ("NUM_SAMPLES", "num_samples"),
    ("SEED", "seed"),
    ("MAX_NEW_TOKENS", "max_new_tokens"),
    ("POLICY", "policy"),
    ("RETURN_CANDIDATES", "return_candidates"),
    ("ADAPTIVE", "adaptive"),
    ("CERTIFY", "certify"),
)


def request_options(request: Any, settings: DefenseSettings) -> RequestOptions:
    """The request's optional inputs, defaulted and bounded by the server's settings."""
    values: dict[str, Any] = {
        keyword: single_scalar(optional_input(request, name), name)
        for name, keyword in OPTION_INPUTS
    }
    values["answer_set"] = decode_answer_set(optional_input(request, "ANSWER_SET"))
    return resolve_options(settings, **values)


def request_prompt(request: Any, settings: DefenseSettings) -> str:
    """The one PROMPT of a defended step's request, decoded and checked (validation)."""
    raw = required_input(request, "PROMPT")
    if raw.size != 1:
        raise InvalidRequest(f"PROMPT must hold one string, got shape {list(raw.shape)}")
    return decode_prompt(raw.reshape(-1)[0], max_chars=settings.max_prompt_chars)


def step_options(
    request: Any, settings: DefenseSettings, *, sigma_max: float | None = None
) -> tuple[RequestOptions, object]:
    """OPTIONS from the noise step, parsed as strictly as a stranger's (parse_options), and the
    ticket it carries (unchecked here: metrics.EnsembleTickets decides what it proves)."""
    raw = required_input(request, "OPTIONS")
    if raw.size != 1:
        raise InvalidRequest(f"OPTIONS must hold one JSON string, got shape {list(raw.shape)}")
    options, extra = parse_options(
        raw.reshape(-1)[0], settings, extra_keys=(TICKET_KEY,), sigma_max=sigma_max
    )
    return options, extra.get(TICKET_KEY)


def bytes_tensor(name: str, values: Sequence[str], shape: Sequence[int] | None = None) -> Any:
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_)
    if shape is not None:
        array = array.reshape(shape)
    return pb_utils.Tensor(name, array)


def error_response(exc: BaseException) -> Any:
    if isinstance(exc, InvalidRequest):
        code = pb_utils.TritonError.INVALID_ARG
        message = str(exc)
    else:
        code = pb_utils.TritonError.INTERNAL
        message = scrub(f"{type(exc).__name__}: {exc}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def respond_each(requests: Sequence[Any], handle: Callable[[Any], list[Any]]) -> list[Any]:
    """One response per request; a bad request gets its own error and never sinks the others."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except InvalidRequest as exc:
            responses.append(error_response(exc))
        except Exception as exc:
            log.exception("request failed")
            responses.append(error_response(exc))
    return responses
