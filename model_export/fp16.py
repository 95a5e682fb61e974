"""float32 ONNX graph -> half precision, with a float32 island for the log-mel front-end.

Why our own pass instead of ``onnxruntime.transformers.float16`` / onnxconverter-common: with
a node block list those converters put a float16 Cast *between* consecutive blocked nodes
(measured on Cnn14: the waveform, the STFT output and the power spectrum each went through a
float32 -> float16 -> float32 round trip), which is exactly the overflow the block list is
meant to avoid (the power spectrum of a loud clip exceeds fp16's 65504).

Rules: nodes in ``keep`` stay float32; every other node computes in float16. A float tensor
crossing from one side to the other gets one Cast; float initializers and ``Constant`` nodes
used by the float16 side become float16 (copies when the float32 side uses them as well);
``Cast(to=float)`` on the float16 side casts to float16. Graph inputs and outputs keep their
float32 type.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _float_values(graph: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor in the graph (after type inference)."""
    inferred = onnx.shape_inference.infer_shapes(graph)
    g = inferred.graph
    infos = list(g.input) + list(g.value_info) + list(g.output)
    names = {v.name for v in infos if v.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in g.initializer if t.data_type == FLOAT}
    for node in g.node:  # Constant outputs are not always listed in value_info
        if node.op_type == "Constant" and node.attribute[0].t.data_type == FLOAT:
            names.add(node.output[0])
    return names


def _half_tensor(tensor: TensorProto, name: str) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    if np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError(f"{tensor.name}: values beyond float16 range")
    return numpy_helper.from_array(array.astype(np.float16), name)


def _cast(src: str, dst: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], name=f"{dst}/Cast", to=to)


def convert(graph: onnx.ModelProto, keep: Iterable[str]) -> onnx.ModelProto:
    """A float16 copy of ``graph`` whose nodes named in ``keep`` stay float32."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    g = model.graph
    floats = _float_values(model)
    # Work on detached copies: protobuf hands out a new wrapper object on every access to a
    # repeated field, so identities (``id``) are only stable on objects we hold ourselves.
    nodes = [_copy(n) for n in g.node]
    half_side = _half_side(nodes, set(keep))
    producer = {out: id(n) for n in nodes for out in n.output}
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input}
    renamed: dict[tuple[str, bool], str] = {}  # (value, wants half) -> name to read
    new_nodes: list[onnx.NodeProto] = []

    def side_of(value: str) -> bool | None:
        """True: the value is float16 in the new graph; None: not produced by a node."""
        return producer[value] in half_side if value in producer else None

    def read(value: str, half: bool) -> str:
        if value not in floats or not value:
            return value
        if value in inits and value not in producer:
            key = (value, half)
            if half and key not in renamed:
                renamed[key] = f"{value}_fp16"
                g.initializer.append(_half_tensor(inits[value], renamed[key]))
            return renamed.get(key, value)
        have = side_of(value)
        is_half = bool(have) if value not in inputs else False
        if is_half == half:
            return value
        key = (value, half)
        if key not in renamed:
            renamed[key] = f"{value}_{'fp16' if half else 'fp32'}"
            new_nodes.append(_cast(value, renamed[key], HALF if half else FLOAT))
        return renamed[key]

    for node in nodes:
        half = id(node) in half_side
        for i, value in enumerate(node.input):
            node.input[i] = read(value, half)
        if half:
            _node_to_half(node)
        new_nodes.append(node)
    _fix_outputs(new_nodes, half_side, producer, outputs, floats)
    used = {v for n in new_nodes for v in n.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.node[:]
    g.node.extend(_topological(new_nodes, inputs | {t.name for t in kept_inits}))
    del g.value_info[:]
    return model


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _half_side(nodes: list[onnx.NodeProto], keep: set[str]) -> set[int]:
    """ids of the nodes that compute in float16: all but ``keep``, and but the Constants that
    feed a float32 node (a constant such as the log's 1e-10 floor must not pass through fp16)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    half = {id(n) for n in nodes if n.name not in keep}
    for node in nodes:
        if node.op_type == "Constant" and any(
            id(c) not in half for c in consumers.get(node.output[0], [])
        ):
            half.discard(id(node))
    return half


def _node_to_half(node: onnx.NodeProto) -> None:
    """Retype a node's own float32 constants and casts to float16."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_half_tensor(attr.t, attr.t.name))
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF


def _fix_outputs(
    nodes: list[onnx.NodeProto],
    half_side: set[int],
    producer: dict[str, int],
    outputs: set[str],
    floats: set[str],
) -> None:
    """Graph outputs computed in float16 are cast back to float32 under their own name."""
    for node in list(nodes):
        if id(node) not in half_side:
            continue
        for i, value in enumerate(node.output):
            if value in outputs and value in floats and producer.get(value) == id(node):
                node.output[i] = f"{value}_fp16"
                for other in nodes:
                    for j, inp in enumerate(other.input):
                        if inp == value:
                            other.input[j] = node.output[i]
                nodes.append(_cast(node.output[i], value, FLOAT))


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order nodes so that each comes after the producers of its inputs (stable otherwise)."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            missing = sorted({i for n in pending for i in n.input} - ready)[:5]
            raise ValueError(f"fp16 conversion left unconnected inputs: {missing}")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        done = {id(n) for n in progress}
        pending = [n for n in pending if id(n) not in done]
    return ordered
