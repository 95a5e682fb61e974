"""The reduced-precision variants of a bundle's float32 graph: fp16 (GPU) and int8 (CPU).

Both keep the log-mel front-end (STFT convolutions, power, mel matmul, log) in float32: the
power spectrum of a loud clip exceeds fp16's 65504, and int8 cannot hold its 100 dB range.

int8 method, measured on this project's 2-core AVX2 CPU (no VNNI) with Cnn14 (fill.py weights),
batch 4 x 10 s, 2 ORT threads, scores compared on the recordings of ``../shared/audio``. Run 1
and 2 were taken under heavy machine load, run 3 on a quiet machine (load < 1.5), the variants
alternating; PyTorch eager took 1811 ms in run 3:

======================================  =====  =====  =====  ==========  ==============
method (ms per batch)                   run 1  run 2  run 3  max |diff|  top-10 overlap
======================================  =====  =====  =====  ==========  ==============
fp32 (reference)                        4512   9250   976    -           -
dynamic (ConvInteger/MatMulInteger)     27746  -      -      2.2e-3      10.0 / 10
static QDQ, Conv/MatMul/Gemm only       4170   6754   608    2.4e-3      10.0 / 10
static QDQ, every op type               -      7153   575    2.8e-3      9.8 / 10
static QOperator (QLinearConv...)       -      7737   608    2.9e-3      9.8 / 10
======================================  =====  =====  =====  ==========  ==============

Dynamic quantization is six times *slower* than float32 here: ONNX Runtime's ConvInteger has
no fast CPU kernel and activations are re-quantized at run time. Static QDQ with unsigned 8-bit
activations and signed 8-bit per-channel weights on the convolutions and matrix products only
was the most accurate and within 6 % of the fastest (quantizing every op type), so that is
what we write, calibrating activation ranges
(MinMax) on real recordings when given (``--calibration-dir``), else on generated audio.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from model_export import fp16
from model_export.graph import frontend_nodes, normalise

log = logging.getLogger(__name__)

# Only the ops that carry the arithmetic are quantized (measured above: quantizing pooling and
# activations too gained at most 6 % speed and lost accuracy).
STATIC_OPS = ["Conv", "MatMul", "Gemm"]


def to_fp16(src: Path, dst: Path) -> None:
    """Write the half-precision variant of ``src``: float32 front-end, float32 inputs/outputs."""
    graph = onnx.load(str(src))
    converted = fp16.convert(graph, keep=frontend_nodes(graph))
    normalise(converted)
    onnx.save(converted, str(dst))


def _drop_preprocess_advice(record: logging.LogRecord) -> bool:
    """ORT's quantizer logs advice to run its shape pre-processing on the root logger; our
    graphs come straight from the exporter with shapes inferred, so the advice is noise."""
    return "pre-processing" not in record.getMessage()


class _Calibration:
    """ONNX Runtime calibration reader: one clip per call."""

    def __init__(self, clips: np.ndarray, input_name: str) -> None:
        self._clips: Iterator[np.ndarray] = iter(clips)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        clip = next(self._clips, None)
        return None if clip is None else {self._input_name: clip[None, :]}

    def rewind(self) -> None:  # part of ORT's reader interface; we read once
        return None


def to_int8(src: Path, dst: Path, calibration: np.ndarray, input_name: str) -> None:
    """Write the statically quantized variant of ``src``, calibrated on ``calibration``
    (clips, shape (n, samples)). Front-end nodes are excluded from quantization."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    graph = onnx.load(str(src), load_external_data=False)
    root = logging.getLogger()
    root.addFilter(_drop_preprocess_advice)
    try:
        quantize_static(
            str(src), str(dst), _Calibration(calibration, input_name),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=STATIC_OPS,
            nodes_to_exclude=frontend_nodes(graph), calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.removeFilter(_drop_preprocess_advice)
    quantized = onnx.load(str(dst))
    normalise(quantized)
    onnx.save(quantized, str(dst))
