"""The gateway's request checks, without a server: every shape Triton 2.51 would mis-size is
refused, and every well-formed request passes untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from smoothguard.serving.gateway import (
    ITEM_SIZE,
    Limits,
    Refused,
    check_grpc_infer,
    check_http_infer,
    check_tensor,
    count_bytes_elements,
    json_depth_ok,
)

LIMITS = Limits()


def grpc_request(*tensors: tuple[str, str, list[int], bytes]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="smoothguard")
    for name, datatype, shape, data in tensors:
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(shape)
        request.raw_input_contents.append(data)
    return request


def serialized(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def test_a_shape_whose_byte_size_wraps_int64_is_refused() -> None:
    # 12 bytes of data, and (2**62 + 1) * 4 * 3 * 1 == 12 modulo 2**64: Triton 2.51 takes it.
    assert ((2**62 + 1) * 4 * 3) % 2**64 == 12
    request = grpc_request(("IMAGE", "UINT8", [2**62 + 1, 4, 3], bytes(12)))
    with pytest.raises(Refused, match=r"input 'IMAGE'.*over the limit"):
        check_grpc_infer(request, LIMITS)
    with pytest.raises(Refused, match="over the limit"):
        check_tensor("AUDIO", "FP32", [2**62, 2**62, 3], 12, LIMITS)


def test_data_size_must_match_the_shape_exactly() -> None:
    with pytest.raises(Refused, match="needs 12 bytes, the request carries 11"):
        check_tensor("IMAGE", "UINT8", [2, 2, 3], 11, LIMITS)
    with pytest.raises(Refused, match="non-negative"):
        check_tensor("IMAGE", "UINT8", [-1, 2, 3], 0, LIMITS)
    with pytest.raises(Refused, match="unknown datatype"):
        check_tensor("IMAGE", "UINT9", [1], 1, LIMITS)


def test_bytes_tensors_must_hold_the_declared_element_count() -> None:
    count_bytes_elements("PROMPT", serialized(b"hi"), 1)
    count_bytes_elements("TEXT", serialized(b"a", b"", b"ccc"), 3)
    for data, expected in ((serialized(b"hi"), 2), (serialized(b"a", b"b"), 1), (b"\x05\0", 1)):
        with pytest.raises(Refused, match="does not hold"):
            count_bytes_elements("PROMPT", data, expected)
    request = grpc_request(("PROMPT", "BYTES", [2**30], serialized(b"x")))
    with pytest.raises(Refused, match="does not hold"):
        check_grpc_infer(request, LIMITS)


def test_typed_contents_are_counted_too() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "SIGMA", "FP32"
    tensor.shape.extend([2**62 + 1, 4])
    tensor.contents.fp32_contents.extend([0.1] * 4)
    with pytest.raises(Refused, match="over the limit"):
        check_grpc_infer(request, LIMITS)
    del tensor.shape[:]
    tensor.shape.extend([4])
    check_grpc_infer(request, LIMITS)
    del tensor.shape[:]
    tensor.shape.extend([5])
    with pytest.raises(Refused, match="contents hold 4"):
        check_grpc_infer(request, LIMITS)


def test_raw_contents_must_pair_with_inputs() -> None:
    request = grpc_request(("IMAGE", "UINT8", [1, 1, 3], bytes(3)))
    request.raw_input_contents.append(b"extra")
    with pytest.raises(Refused, match="1 inputs but 2 raw_input_contents"):
        check_grpc_infer(request, LIMITS)


@given(
    datatype=st.sampled_from(sorted(ITEM_SIZE)),
    shape=st.lists(st.integers(0, 6), max_size=4),
)
def test_every_well_formed_tensor_passes(datatype: str, shape: list[int]) -> None:
    data = bytes(int(np.prod(shape, dtype=np.int64)) * ITEM_SIZE[datatype])
    check_grpc_infer(grpc_request(("X", datatype, shape, data)), LIMITS)


def test_deeply_nested_json_is_caught_by_a_linear_scan() -> None:
    assert json_depth_ok(b'{"inputs": [{"shape": [1, 2], "data": [[1, 2]]}]}', 5)
    assert not json_depth_ok(b"[" * 100_000 + b"]" * 100_000, 64)
    assert not json_depth_ok(b"[" * 65, 64)  # unbalanced still counts
    # brackets inside strings, escaped quotes included, are not nesting
    assert json_depth_ok(json.dumps({"p": "[[[[" * 50 + '\\"' + "{{{{" * 50}).encode(), 2)


def http_input(name: str, datatype: str, shape: list[object], **extra: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, **extra}


def test_http_values_triton_would_wrap_are_refused() -> None:
    ok = {"inputs": [http_input("IMAGE", "UINT8", [1, 1, 3], data=[[[0, 128, 255]]])]}
    check_http_infer(ok, None, LIMITS)
    for value in (300, -1, 1.5, True, "7"):
        bad = {"inputs": [http_input("IMAGE", "UINT8", [1], data=[value])]}
        with pytest.raises(Refused, match="input 'IMAGE'"):
            check_http_infer(bad, None, LIMITS)
    with pytest.raises(Refused, match="'data' holds 2"):
        check_http_infer({"inputs": [http_input("N", "INT32", [3], data=[1, 2])]}, None, LIMITS)
    with pytest.raises(Refused, match="over the limit"):
        check_http_infer(
            {"inputs": [http_input("IMAGE", "UINT8", [2**62, 2**62, 3], data=[1])]}, None, LIMITS
        )
    with pytest.raises(Refused, match="non-negative integers"):
        check_http_infer({"inputs": [http_input("N", "INT32", ["1"], data=[1])]}, None, LIMITS)


def test_http_binary_sizes_are_checked_against_the_shape_and_the_body() -> None:
    binary = {"parameters": {"binary_data_size": 12}}
    check_http_infer({"inputs": [http_input("IMAGE", "UINT8", [2, 2, 3], **binary)]}, 12, LIMITS)
    with pytest.raises(Refused, match="body carries 11"):
        check_http_infer(
            {"inputs": [http_input("IMAGE", "UINT8", [2, 2, 3], **binary)]}, 11, LIMITS
        )
    with pytest.raises(Refused, match="needs 12 bytes"):
        wrapped = http_input("IMAGE", "UINT8", [2, 2, 3], parameters={"binary_data_size": 4})
        check_http_infer({"inputs": [wrapped]}, 4, LIMITS)
    with pytest.raises(Refused, match="'inputs' list"):
        check_http_infer({"inputs": 3}, None, LIMITS)
