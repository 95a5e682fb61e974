"""The exact graph rewrites: same outputs from a cheaper graph, and left alone where unsafe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_export.graph import export_onnx
from model_export.rewrite import MEL_WEIGHT, STFT_WEIGHTS, pools_as_depthwise_convs, trim_spectrum
from tests.model_export.conftest import seeded_model


def _run(graph: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feeds)]


def _pool(name: str, src: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node("AveragePool", [src], [name], name=name, **attrs)


def _pool_graph() -> onnx.ModelProto:
    """Five pools over a (batch, 6, 9, 11) input: three a depthwise conv can express, two not."""
    nodes = [
        _pool("halve", "x", kernel_shape=[2, 2], strides=[2, 2]),
        _pool("same_padded", "x", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        _pool("uneven", "x", kernel_shape=[1, 3], strides=[1, 2]),
        _pool("ceil", "x", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        _pool("pads_excluded", "x", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 9, 11])
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    graph = helper.make_graph(nodes, "pools", [x], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pools_become_depthwise_convs_with_the_same_outputs() -> None:
    original = _pool_graph()
    rewritten = _pool_graph()
    assert pools_as_depthwise_convs(rewritten) == 3
    kinds = {node.name: node.op_type for node in rewritten.graph.node}
    assert kinds == {
        "halve": "Conv",
        "same_padded": "Conv",
        "uneven": "Conv",
        "ceil": "AveragePool",
        "pads_excluded": "AveragePool",
    }
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 11)).astype(np.float32)
    for want, got in zip(_run(original, {"x": x}), _run(rewritten, {"x": x}), strict=True):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def cnn6_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, np.ndarray]:
    """Cnn6's exported (trimmed) graph and the model's full mel filterbank."""
    model = seeded_model("Cnn6")
    path = tmp_path_factory.mktemp("cnn6") / "model.onnx"
    graph = export_onnx(model, path, example_samples=32000)
    return graph, model.logmel_extractor.melW.detach().numpy()  # type: ignore[union-attr]


def _weights(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}


def test_export_keeps_only_the_bins_the_mel_filterbank_weights(
    cnn6_graph: tuple[onnx.ModelProto, np.ndarray],
) -> None:
    graph, full_mel = cnn6_graph
    weights = _weights(graph)
    # 32 kHz, 1024-point FFT, 50 Hz - 14 kHz: bins 2..447 carry weight, 67 of 513 go
    assert weights[MEL_WEIGHT].shape == (446, 64)
    np.testing.assert_array_equal(weights[MEL_WEIGHT], full_mel[2:448])
    assert not full_mel[:2].any() and not full_mel[448:].any()
    for name in STFT_WEIGHTS:
        assert weights[name].shape == (446, 1, 1024)
    assert trim_spectrum(graph) == 0  # nothing left to drop


def test_waveform_models_and_exposed_spectra_are_left_alone(
    cnn6_graph: tuple[onnx.ModelProto, np.ndarray],
    tmp_path: Path,
) -> None:
    leenet = export_onnx(seeded_model("LeeNet11"), tmp_path / "leenet.onnx", 16000)
    assert trim_spectrum(leenet) == 0
    graph = onnx.ModelProto()
    graph.CopyFrom(cnn6_graph[0])
    weights = graph.graph.initializer
    full = np.zeros((513, 64), np.float32)
    full[2:448] = _weights(graph)[MEL_WEIGHT]
    for init in weights:  # put the untrimmed shapes back ...
        if init.name == MEL_WEIGHT:
            init.CopyFrom(numpy_helper.from_array(full, MEL_WEIGHT))
        elif init.name in STFT_WEIGHTS:
            padded = np.zeros((513, 1, 1024), np.float32)
            init.CopyFrom(numpy_helper.from_array(padded, init.name))
    power = next(n for n in graph.graph.node if n.name.endswith("spectrogram_extractor/Add"))
    graph.graph.output.append(  # ... and expose the power spectrum: it must keep every bin
        helper.make_tensor_value_info(power.output[0], TensorProto.FLOAT, None)
    )
    assert trim_spectrum(graph) == 0
    assert _weights(graph)[MEL_WEIGHT].shape == (513, 64)
