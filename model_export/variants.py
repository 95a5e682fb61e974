"""The reduced-precision variants of a bundle's float32 graph: fp16 (GPU) and int8 (CPU).

Both keep the log-mel front-end (STFT convolutions, power, mel matmul, log) in float32: the
power spectrum of a loud clip exceeds fp16's 65504, and int8 cannot hold its 100 dB range.

int8 method, measured on this project's 2-core AVX2 CPU (no VNNI) with Cnn14 (fill.py weights),
2 ORT threads, the variants alternating on a quiet machine. Table A (batch 4 x 10 s; PyTorch
eager 1811 ms) chose the method; table B (batch 8 x 10 s, the issue's benchmark shape; PyTorch
eager 3300-3550 ms) chose which ops it covers and how the graph is prepared:

======================================  ========  ==========  ==============
A: method                               ms/batch  max |diff|  top-10 overlap
======================================  ========  ==========  ==============
fp32 (reference)                        976       -           -
dynamic (ConvInteger/MatMulInteger)     27746 *   2.2e-3      10.0 / 10
static QDQ, Conv/MatMul/Gemm            608       2.4e-3      10.0 / 10
static QDQ, every op type               575       2.8e-3      9.8 / 10
static QOperator (QLinearConv...)       608       2.9e-3      9.8 / 10
======================================  ========  ==========  ==============

(* taken under heavy machine load; it stayed about six times slower than fp32 when quiet.)

======================================================  ========  ==========  ==============
B: static QDQ over ...                                  ms/batch  max |diff|  top-10 overlap
======================================================  ========  ==========  ==============
fp32 (reference)                                        1955      -           -
Conv/MatMul/Gemm                                        1164      -           -
Conv/MatMul/Gemm/Relu                                   1108      4.0e-2      10.0 / 10
Conv/MatMul/Gemm/Relu/AveragePool (QLinearAveragePool)  1103      -           -
every op type                                           1118      -           -
Conv/MatMul/Gemm/Relu, pools as depthwise convs         1064      3.9e-2      9.9 / 10
... and the STFT cut to the mel band (shipped)          1047 +    -           -
======================================================  ========  ==========  ==============

(Table B's differences are on generated clips other than the calibration clips, where these
weights saturate far less than on real recordings. + ORT profiler total in the same conditions:
the trim takes the STFT convolutions from 104 to 91 ms.)

Dynamic quantization is six times *slower* than float32 here: ONNX Runtime's ConvInteger has
no fast CPU kernel and activations are re-quantized at run time. Static QDQ with unsigned 8-bit
activations and signed 8-bit per-channel weights is what we write, calibrating activation
ranges (MinMax) on real recordings when given (``--calibration-dir``), else on generated audio.
Which ops it covers matters as much as the method:

* ``Relu``: quantizing it lets the quantizer give each convolution the ReLU's output range, so
  ONNX Runtime folds the ReLU into the ``QLinearConv``; left out, every convolution pays a
  dequantize + requantize round trip (48 ms after Cnn14's first convolution alone).
* ``AveragePool``: ``QLinearAveragePool`` is slow (43 ms for Cnn14's first pool), and a float32
  pool costs dequantize / reorder / quantize / transpose. Written as a depthwise convolution
  (:mod:`model_export.rewrite`, exact), it is a 3 ms ``QLinearConv``.
* Everything else (reductions, sigmoid, attention, additions) stays float32: quantizing every op
  type was slower and less accurate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from model_export import fp16
from model_export.graph import frontend_nodes, normalise
from model_export.rewrite import pools_as_depthwise_convs

log = logging.getLogger(__name__)

# The ops that carry the arithmetic, and ReLU so that it folds into them (measured above).
STATIC_OPS = ["Conv", "MatMul", "Gemm", "Relu"]


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

    graph = onnx.load(str(src))
    pools = pools_as_depthwise_convs(graph)
    log.info("int8: %d average pools written as depthwise convolutions", pools)
    root = logging.getLogger()
    root.addFilter(_drop_preprocess_advice)
    try:
        quantize_static(
            graph,
            str(dst),
            _Calibration(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=STATIC_OPS,
            nodes_to_exclude=frontend_nodes(graph),
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.removeFilter(_drop_preprocess_advice)
    quantized = onnx.load(str(dst))
    normalise(quantized)
    onnx.save(quantized, str(dst))
