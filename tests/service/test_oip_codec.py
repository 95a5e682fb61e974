"""service.oip: Open Inference Protocol bodies, JSON and binary, without a server.

The bodies are built by tritonclient's own request encoder where one exists (a client nobody
here wrote), so the parser is checked against what real clients send.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from service.oip import (
    HeaderTooLarge,
    ProtocolError,
    RequestedOutput,
    Tensor,
    decode_response,
    encode_request,
    encode_response,
    header_length,
    parse_request,
)

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.http._utils import _get_inference_request  # noqa: E402

LIMIT = 1 << 20


def triton_body(
    inputs: list, outputs: list | None = None, **params: object
) -> tuple[bytes, int | None]:
    """The body and JSON length tritonclient's InferenceServerClient.infer would send."""
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id="r1",
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=params or None,
    )
    return (body if isinstance(body, bytes) else body.encode()), json_size


def fp32_input(array: np.ndarray, binary: bool) -> object:
    tensor = tritonhttp.InferInput("waveform", list(array.shape), "FP32")
    return tensor.set_data_from_numpy(array, binary_data=binary)


@pytest.mark.parametrize("binary", [False, True])
def test_fp32_from_tritonclient(binary: bool) -> None:
    wave = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    out = tritonhttp.InferRequestedOutput("clipwise_output", binary_data=True)
    body, size = triton_body([fp32_input(wave, binary)], [out], window_s=2.5)
    request = parse_request(body, size, LIMIT)
    assert request.id == "r1"
    assert request.parameters == {"window_s": 2.5}
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("waveform", "FP32", (2, 5))
    np.testing.assert_array_equal(tensor.data, wave)
    assert request.outputs == [RequestedOutput("clipwise_output", True)]
    assert request.binary(request.outputs[0]) is True


def test_bytes_from_tritonclient_binary() -> None:
    items = np.array([b"RIFF\x00\xff", b"", b"OggS" * 3], dtype=np.object_)
    tensor = tritonhttp.InferInput("audio", [3], "BYTES").set_data_from_numpy(items, True)
    body, size = triton_body([tensor])
    request = parse_request(body, size, LIMIT)
    assert [bytes(x) for x in request.inputs[0].data] == list(items)
    assert request.outputs is None
    assert request.binary(None) is True  # tritonclient asks for binary_data_output


def test_bytes_json_are_utf8_strings() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "audio", "shape": [2], "datatype": "BYTES", "data": ["abc", "é"]}]}
    )
    assert [bytes(x) for x in parse_request(body, None, LIMIT).inputs[0].data] == [
        b"abc",
        "é".encode(),
    ]


def test_request_round_trip_and_nested_json() -> None:
    wave = np.arange(6, dtype=np.float32).reshape(2, 3)
    for binary in (True, False):
        body, size = encode_request(
            [Tensor("waveform", "FP32", (2, 3), wave)],
            [RequestedOutput("x", True)],
            {"pad": False},
            binary=binary,
        )
        request = parse_request(body, size, LIMIT)
        np.testing.assert_array_equal(request.inputs[0].data, wave)
        assert request.parameters == {"pad": False}
    nested = orjson.dumps(
        {
            "inputs": [
                {"name": "w", "shape": [2, 3], "datatype": "FP32", "data": [[0, 1, 2], [3, 4, 5]]}
            ]
        }
    )
    np.testing.assert_array_equal(parse_request(nested, None, LIMIT).inputs[0].data, wave)


def test_response_round_trip_mixed_json_and_binary() -> None:
    a = np.random.default_rng(1).random((2, 4)).astype(np.float32)
    b = np.random.default_rng(2).random((2, 3, 4)).astype(np.float32)
    body, size = encode_response(
        "m",
        "v1",
        "42",
        [(Tensor("a", "FP32", a.shape, a), False), (Tensor("b", "FP32", b.shape, b), True)],
    )
    assert size is not None and orjson.loads(body[:size])["id"] == "42"
    out = decode_response(body, size)
    np.testing.assert_array_equal(out["a"].data, a)  # float32 survives JSON exactly
    np.testing.assert_array_equal(out["b"].data, b)
    result = tritonhttp.InferResult.from_response_body(body, header_length=size)
    np.testing.assert_array_equal(result.as_numpy("a"), a)
    np.testing.assert_array_equal(result.as_numpy("b"), b)


def bad(obj: object, binary: bytes = b"") -> tuple[bytes, int | None]:
    head = orjson.dumps(obj)
    return head + binary, (len(head) if binary else None)


def wave_input(**fields: object) -> dict[str, object]:
    return {"inputs": [{"name": "waveform", "shape": [1, 2], "datatype": "FP32", **fields}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (bad({"inputs": []}), "non-empty list of inputs"),
        (bad(wave_input(data=[1.0])), "needs 2 values, data has 1"),
        (bad(wave_input(data=[1.0, "x"])), "not FP32 numbers"),
        (bad(wave_input(data=[[1.0], [2.0, 3.0]])), "not a regular array"),
        (bad(wave_input(data=[1, 2], datatype="FLOAT")), "unknown datatype 'FLOAT'"),
        (bad(wave_input(data=[1, 2], shape=[1, -2])), "shape must be a list"),
        (bad(wave_input()), "no data and no binary_data_size"),
        (bad(wave_input(parameters={"binary_data_size": 4}), b"\0" * 4), "needs 8 bytes"),
        (bad(wave_input(parameters={"binary_data_size": 8}), b"\0" * 4), "runs past"),
        (bad(wave_input(parameters={"binary_data_size": 8}), b"\0" * 12), "add up to 8"),
        (
            bad(
                {
                    "inputs": [
                        {
                            "name": "a",
                            "shape": [2],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 9},
                        }
                    ]
                },
                struct.pack("<I", 1) + b"x" + struct.pack("<I", 9),
            ),
            "overruns",
        ),
        (
            bad({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]}),
            "must be strings",
        ),
        (
            bad(
                {
                    "inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
                    "outputs": [{"name": "o", "parameters": {"binary_data": "yes"}}],
                }
            ),
            "binary_data must be true or false",
        ),
        ((b"{not json", None), "not valid JSON"),
    ],
)
def test_bad_requests_name_the_problem(body: tuple[bytes, int | None], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_request(body[0], body[1], LIMIT)


def test_header_length_is_checked() -> None:
    assert header_length(None, 10) is None
    assert header_length(" 7 ", 10) == 7
    for value in ("0", "11", "-1", "1e3", "9" * 30):
        with pytest.raises(ProtocolError):
            header_length(value, 10)


def test_json_part_is_bounded() -> None:
    body = orjson.dumps(wave_input(data=[0.0] * 2))
    with pytest.raises(HeaderTooLarge):
        parse_request(body, None, len(body) - 1)
