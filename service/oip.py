"""Open Inference Protocol (v2, REST) bodies: parse and build them, JSON and binary tensor data.

No web framework here: the OIP door (``service.routes.oip``) and the ``oip`` backend (the
engine tier's client) both use it. It follows KServe's open inference protocol REST spec and
Triton's binary tensor data extension: with binary data the body is the JSON object, then
each binary tensor's bytes in the order the JSON lists them; the ``Inference-Header-Content-
Length`` header gives the JSON object's length, ``binary_data_size`` each tensor's bytes;
binary data is little-endian and row-major, a BYTES element is a 4-byte length then the bytes.

Every malformed body raises ``ProtocolError`` naming the problem (a 400 at the door).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.core.card import ModelCard

HEADER = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"
# Datatype -> numpy dtype (little-endian); BYTES is variable-sized and handled apart.
NUMERIC: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
BYTES = "BYTES"
MAX_DIMS = 8
Parameters = dict[str, str | int | float | bool]


def model_version(card: ModelCard) -> str:
    """A model's one version: the first 16 hex digits of its fp32 graph's SHA-256, so a
    client (or a front tier) that names a version gets exactly those weights or a 404."""
    return card.checksum[:16]


class ProtocolError(ValueError):
    """A body that does not follow the protocol (a 400 at the door)."""

    code = "invalid_request"


class HeaderTooLarge(ProtocolError):
    """The JSON part is larger than allowed (a 413 at the door)."""

    code = "request_too_large"


@dataclass
class Tensor:
    """One input or output: ``data`` is a numpy array of ``shape``, or for BYTES a flat list."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes | memoryview]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def binary(self, output: RequestedOutput | None) -> bool:
        """Whether an output goes back as binary data (its own flag, else the request's)."""
        if output is not None and output.binary is not None:
            return output.binary
        return self.parameters.get("binary_data_output") is True


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` value, checked against the body's size."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 19:
        raise ProtocolError(f"{HEADER} must be a byte count, not {value[:40]!r}")
    length = int(value)
    if not 0 < length <= body_size:
        raise ProtocolError(f"{HEADER} is {length}, but the body holds {body_size} bytes")
    return length


def _json_object(data: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the {what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"the {what} must be a JSON object")
    return obj


def _parameters(obj: Any, where: str) -> Parameters:
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not all(
        isinstance(v, str | int | float | bool) for v in obj.values()
    ):
        raise ProtocolError(f"{where}: parameters must be an object of strings, numbers, booleans")
    return obj


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise ProtocolError(f"{where}: shape must be a list of at most {MAX_DIMS} sizes >= 0")
    return tuple(value)


def _numeric_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a JSON array")
    try:
        array = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise ProtocolError(f"{where}: data is not a regular array: {exc}") from exc
    kinds = "b" if datatype == "BOOL" else "iuf"
    if array.size and array.dtype.kind not in kinds:
        raise ProtocolError(f"{where}: data holds values that are not {datatype} numbers")
    if array.size != math.prod(shape):
        raise ProtocolError(
            f"{where}: shape {list(shape)} needs {math.prod(shape)} values, data has {array.size}"
        )
    return array.astype(NUMERIC[datatype]).reshape(shape)


def _bytes_json(data: Any, count: int, where: str) -> list[bytes | memoryview]:
    flat = _flatten(data, where)
    if len(flat) != count:
        raise ProtocolError(f"{where}: shape needs {count} elements, data has {len(flat)}")
    if not all(isinstance(s, str) for s in flat):
        raise ProtocolError(f"{where}: BYTES data in JSON must be strings")
    return [s.encode() for s in flat]


def _flatten(data: Any, where: str, depth: int = 0) -> list[Any]:
    if not isinstance(data, list) or depth > MAX_DIMS:
        raise ProtocolError(f"{where}: data must be a (nested) JSON array")
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item, where, depth + 1) if isinstance(item, list) else [item])
    return out


def split_bytes(raw: memoryview, count: int, where: str) -> list[bytes | memoryview]:
    """``count`` BYTES elements (4-byte little-endian length, then the bytes) filling ``raw``."""
    if count * 4 > len(raw):
        raise ProtocolError(f"{where}: {len(raw)} bytes cannot hold {count} BYTES elements")
    out: list[bytes | memoryview] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: binary data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(f"{where}: an element of {size} bytes overruns the binary data")
        out.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise ProtocolError(f"{where}: {len(raw) - offset} bytes left after {count} elements")
    return out


def _from_binary(
    raw: memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray | list[bytes | memoryview]:
    count = math.prod(shape)
    if datatype == BYTES:
        return split_bytes(raw, count, where)
    need = count * NUMERIC[datatype].itemsize
    if len(raw) != need:
        raise ProtocolError(
            f"{where}: shape {list(shape)} of {datatype} needs {need} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, NUMERIC[datatype]).reshape(shape)


def _tensor(obj: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One request input; ``offset`` is where its binary data starts (if it has any)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ProtocolError(f"inputs[{index}] must be an object with a string name")
    where = f"input {obj['name']!r}"
    datatype = obj.get("datatype")
    if datatype != BYTES and datatype not in NUMERIC:
        known = ", ".join([*NUMERIC, BYTES])
        raise ProtocolError(f"{where}: unknown datatype {datatype!r} (one of {known})")
    shape = _shape(obj.get("shape"), where)
    params = _parameters(obj.get("parameters"), where)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in obj:
            raise ProtocolError(f"{where}: no data and no binary_data_size")
        data: Any = (
            _bytes_json(obj["data"], math.prod(shape), where)
            if datatype == BYTES
            else _numeric_json(obj["data"], datatype, shape, where)
        )
        return Tensor(obj["name"], datatype, shape, data, params), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{where}: binary_data_size must be a byte count")
    if offset + size > len(binary):
        raise ProtocolError(
            f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of binary data"
        )
    data = _from_binary(binary[offset : offset + size], datatype, shape, where)
    return Tensor(obj["name"], datatype, shape, data, params), offset + size


def _outputs(obj: Any) -> list[RequestedOutput] | None:
    if obj is None:
        return None
    if not isinstance(obj, list):
        raise ProtocolError("outputs must be a list")
    out = []
    for index, item in enumerate(obj):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{index}] must be an object with a string name")
        flag = _parameters(item.get("parameters"), f"output {item['name']!r}").get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise ProtocolError(f"output {item['name']!r}: binary_data must be true or false")
        out.append(RequestedOutput(item["name"], flag))
    return out


def parse_request(
    body: bytes | bytearray | memoryview, header: int | None, max_json_bytes: int
) -> InferRequest:
    """An inference request: the JSON object (all of ``body``, or its first ``header``
    bytes) and the binary data after it, each tensor's size checked against its shape."""
    view = memoryview(body)
    json_part, binary = (view, view[:0]) if header is None else (view[:header], view[header:])
    if len(json_part) > max_json_bytes:
        raise HeaderTooLarge(
            f"the JSON part is {len(json_part)} bytes, the limit is {max_json_bytes}: "
            "send large tensors as binary data"
        )
    obj = _json_object(json_part, "request")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty list of inputs")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    tensors, offset = [], 0
    for index, item in enumerate(inputs):
        tensor, offset = _tensor(item, index, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise ProtocolError(
            f"the body holds {len(binary)} bytes of binary data, the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return InferRequest(
        tensors,
        _outputs(obj.get("outputs")),
        request_id,
        _parameters(obj.get("parameters"), "the request"),
    )


def _binary_bytes(tensor: Tensor) -> bytes | memoryview:
    """The tensor's binary data: numeric tensors as a view of their array (the body's one
    join is then their only copy)."""
    if tensor.datatype == BYTES:
        items = [bytes(item) for item in tensor.data]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    assert isinstance(tensor.data, np.ndarray)
    return np.ascontiguousarray(tensor.data, NUMERIC[tensor.datatype]).data.cast("B")


def _tensor_json(tensor: Tensor, binary: bool, chunks: list[bytes | memoryview]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "datatype": tensor.datatype,
    }
    params = dict(tensor.parameters)
    if binary:
        chunks.append(_binary_bytes(tensor))
        params["binary_data_size"] = len(chunks[-1])
    elif tensor.datatype == BYTES:
        obj["data"] = [bytes(item).decode("utf-8", "replace") for item in tensor.data]
    else:
        assert isinstance(tensor.data, np.ndarray)
        obj["data"] = tensor.data.reshape(-1)
    if params:
        obj["parameters"] = params
    return obj


def _body(obj: dict[str, Any], chunks: list[bytes | memoryview]) -> tuple[bytes, int | None]:
    header = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[Tensor, bool]],
) -> tuple[bytes, int | None]:
    """An inference response body and its JSON length (None: no binary data, all JSON)."""
    chunks: list[bytes | memoryview] = []
    obj: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        obj["model_version"] = model_version
    if request_id is not None:
        obj["id"] = request_id
    obj["outputs"] = [_tensor_json(t, binary, chunks) for t, binary in outputs]
    return _body(obj, chunks)


def encode_request(
    inputs: Sequence[Tensor],
    outputs: Sequence[RequestedOutput],
    parameters: Parameters | None = None,
    binary: bool = True,
) -> tuple[bytes, int | None]:
    """An inference request body (inputs as binary data by default) and its JSON length."""
    chunks: list[bytes | memoryview] = []
    obj: dict[str, Any] = {"inputs": [_tensor_json(t, binary, chunks) for t in inputs]}
    obj["outputs"] = [
        {"name": o.name, **({} if o.binary is None else {"parameters": {"binary_data": o.binary}})}
        for o in outputs
    ]
    if parameters:
        obj["parameters"] = parameters
    return _body(obj, chunks)


def _response_tensor(obj: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ProtocolError("every response output must be an object with a string name")
    where, datatype = f"output {obj['name']!r}", obj.get("datatype")
    if datatype not in NUMERIC:
        raise ProtocolError(f"{where}: unexpected datatype {datatype!r}")
    shape = _shape(obj.get("shape"), where)
    size = _parameters(obj.get("parameters"), where).get("binary_data_size")
    if size is None:
        return Tensor(
            obj["name"], datatype, shape, _numeric_json(obj.get("data"), datatype, shape, where)
        ), offset
    if not isinstance(size, int) or offset + size > len(binary):
        raise ProtocolError(f"{where}: binary_data_size runs past the body")
    data = _from_binary(binary[offset : offset + size], datatype, shape, where)
    return Tensor(obj["name"], datatype, shape, data), offset + size


def decode_response(body: bytes, header: int | None) -> dict[str, Tensor]:
    """A numeric inference response's outputs by name (the ``oip`` backend's side)."""
    view = memoryview(body)
    json_part, binary = (view, view[:0]) if header is None else (view[:header], view[header:])
    obj = _json_object(json_part, "response")
    outputs = obj.get("outputs")
    if not isinstance(outputs, list):
        raise ProtocolError("the response has no list of outputs")
    out, offset = {}, 0
    for item in outputs:
        tensor, offset = _response_tensor(item, binary, offset)
        out[tensor.name] = tensor
    return out
