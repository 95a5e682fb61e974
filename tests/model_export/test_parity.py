"""ONNX Runtime vs PyTorch and vs the reference fixtures, one model of each family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from model_export import ParityError, export_bundle
from service.core.card import load_bundle
from tests.conftest import reference_fill, shared_path
from tests.model_export.conftest import reference_model, seeded_model

# FACTS.md: a faithful float32 implementation is within 2e-5 on probabilities and 1e-4 on
# embeddings of the reference outputs.
ATOL = {"clipwise_output": 2e-5, "framewise_output": 2e-5, "embedding": 1e-4}


def run_onnx(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"waveform": batch}), strict=True))


def run_torch(model: nn.Module, batch: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(batch))
    return {k: v.numpy() for k, v in out.items()}


def assert_matches_fixture(arch: str, bundle: Path) -> None:
    fixture = np.load(shared_path("reference", "parity", f"{arch}.npz"))
    card = load_bundle(bundle)
    inputs = reference_fill().make_inputs(card.sample_rate)
    for input_name, batch in inputs.items():
        got = run_onnx(bundle / card.files["fp32"].path, batch)
        for output in card.outputs:
            expected = fixture[f"{input_name}__{output.name}"]
            assert got[output.name].shape == expected.shape, (input_name, output.name)
            np.testing.assert_allclose(
                got[output.name],
                expected,
                atol=ATOL[output.name],
                rtol=1e-4,
                err_msg=f"{arch} {input_name} {output.name}",
            )


@pytest.mark.parametrize(
    "arch",
    [
        "MobileNetV1",  # MobileNet, 5 M parameters: always run
        pytest.param("Cnn14", marks=pytest.mark.slow),  # 2-D log-mel CNN
        pytest.param("Res1dNet31", marks=pytest.mark.slow),  # 1-D waveform
        pytest.param("Wavegram_Logmel_Cnn14", marks=pytest.mark.slow),  # Wavegram-Logmel
        pytest.param("Cnn14_DecisionLevelMax", marks=pytest.mark.slow),  # decision-level SED
    ],
)
def test_onnx_matches_reference_fixture(arch: str, tmp_path: Path) -> None:
    shared_path("reference", "parity", f"{arch}.npz")  # skip early without the fixture
    card = export_bundle(reference_model(arch), tmp_path / arch.lower(), arch=arch)
    assert card.parity["fp32"].max_abs_diff["clipwise_output"] <= 1e-4
    assert_matches_fixture(arch, tmp_path / arch.lower())


@pytest.mark.parametrize(
    "arch", ["Cnn6", "LeeNet11", pytest.param("Cnn14_DecisionLevelAtt", marks=pytest.mark.slow)]
)
def test_onnx_matches_pytorch_at_other_lengths(arch: str, tmp_path: Path) -> None:
    """Any batch and length, not only the verification inputs (odd lengths included)."""
    model = seeded_model(arch)
    card = export_bundle(model, tmp_path / "b", arch=arch)
    rng = np.random.default_rng(7)
    for batch, seconds in [(1, 10.0), (4, 1.37), (2, 5.011)]:
        samples = max(card.min_samples, int(seconds * card.sample_rate))
        wave = (0.2 * rng.standard_normal((batch, samples))).astype(np.float32)
        got, expected = run_onnx(tmp_path / "b" / "model.onnx", wave), run_torch(model, wave)
        for name, value in expected.items():
            assert got[name].shape == value.shape
            np.testing.assert_allclose(got[name], value, atol=1e-4 if name != "embedding" else 1e-3)
    if arch == "Cnn14_DecisionLevelAtt":  # the framewise card fields
        framewise = next((o for o in card.outputs if o.kind == "framewise"), None)
        assert framewise is not None and framewise.shape == [-1, -1, 527]
        assert card.frames_per_second == 100.0


def test_fp16_and_int8_variants(tmp_path: Path) -> None:
    model = seeded_model("Cnn6")
    card = export_bundle(model, tmp_path / "cnn6", arch="Cnn6", fp16=True, int8=True)
    assert set(card.files) == {"fp32", "fp16", "int8"}
    assert card.parity["fp16"].max_abs_diff["clipwise_output"] <= 1e-2
    assert card.parity["int8"].top10_agreement is not None
    import onnx

    fp16 = onnx.load(str(tmp_path / "cnn6" / "model.fp16.onnx"))
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float32 for v in fp16.graph.input)
    assert all(v.type.tensor_type.elem_type == float32 for v in fp16.graph.output)
    # the front-end's convolutions stay float32, the network's are half precision
    halves = {i.name for i in fp16.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    stft = [i.name for i in fp16.graph.initializer if "spectrogram_extractor" in i.name]
    assert stft and not set(stft) & halves and len(halves) > 10
    # one float16 cast, after the log: STFT, power, mel and log never pass through fp16
    to_half = [
        n
        for n in fp16.graph.node
        if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16
    ]
    assert [n.input[0] for n in to_half] == ["/model/logmel_extractor/Sub_output_0"]
    int8 = onnx.load(str(tmp_path / "cnn6" / "model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    # pools run as depthwise convolutions and each ReLU folds into the quantized op before it
    assert not [n.name for n in int8.graph.node if n.op_type in ("AveragePool", "Relu")]
    wave = (0.1 * np.random.default_rng(3).standard_normal((2, 64000))).astype(np.float32)
    ref = run_torch(model, wave)["clipwise_output"]
    for variant, atol in [("fp16", 1e-2), ("int8", 0.2)]:
        got = run_onnx(tmp_path / "cnn6" / card.files[variant].path, wave)["clipwise_output"]
        np.testing.assert_allclose(got, ref, atol=atol)


class _LengthBaked(nn.Module):
    """A model the tracer gets wrong: a Python int taken from the input shape is frozen into
    the graph, so the graph is right only at the traced length."""

    sample_rate, min_samples, classes_num = 16000, 1, 4
    output_names = ("clipwise_output",)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 4)

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = waveform.abs().sum(dim=1, keepdim=True) / int(waveform.shape[1])
        return {"clipwise_output": torch.sigmoid(self.fc(100 * mean))}


def test_parity_failure_writes_nothing(tmp_path: Path) -> None:
    from service.core.card import Label

    labels = [Label(index=i, mid=f"c{i}", display_name=f"class {i}") for i in range(4)]
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"clipwise_output max abs diff \d"):
        export_bundle(_LengthBaked(), out, arch="custom", labels=labels)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind
