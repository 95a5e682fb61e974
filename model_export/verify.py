"""Prove an exported graph computes what the PyTorch model computes, before any card is written.

fp32 and fp16 are gated (max abs difference on probabilities, i.e. ``clipwise_output`` and
``framewise_output``, across every verification input); int8 is measured and reported: max
abs difference and top-10 agreement against PyTorch on real recordings when given, else on
generated audio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_export.audio import generated_batch
from model_export.graph import INPUT_NAME, ExportError, GraphSpec
from service.core.card import Parity

log = logging.getLogger(__name__)

PROBABILITY_OUTPUTS = ("clipwise_output", "framewise_output")
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
Batch = dict[str, np.ndarray]  # input description -> (batch, samples) float32


class ParityError(ExportError):
    """An exported graph disagrees with PyTorch beyond the tolerance."""


@dataclass
class Reference:
    """Verification inputs and what PyTorch computes on them."""

    inputs: Batch
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def parity_inputs(sample_rate: int, clip_samples: int, min_samples: int) -> Batch:
    """10 s and short inputs, batch 1 and > 1 (lengths other than the traced one included)."""
    short = max(min_samples, 3 * sample_rate)
    shortest = max(min_samples, 1)
    return {
        f"2x{clip_samples / sample_rate:g}s generated": generated_batch(
            sample_rate, 2, clip_samples, seed=0
        ),
        f"1x{short / sample_rate:g}s generated": generated_batch(sample_rate, 1, short, seed=2),
        f"3x{shortest} samples (min_samples) generated": generated_batch(
            sample_rate, 3, shortest, seed=3
        ),
    }


def torch_reference(model: nn.Module, inputs: Batch) -> Reference:
    """Run the PyTorch model (eval, no grad) on every input batch."""
    names = GraphSpec.of(model).output_names
    ref = Reference(inputs=inputs)
    with torch.no_grad():
        for name, batch in inputs.items():
            out = model(torch.from_numpy(batch))
            ref.outputs[name] = {k: out[k].detach().cpu().numpy() for k in names}
    return ref


def session(path: Path, providers: list[str] | None = None, threads: int = 0) -> object:
    """An ONNX Runtime session on ``path`` (CPU unless told otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def run_session(sess: object, names: tuple[str, ...], batch: np.ndarray) -> dict[str, np.ndarray]:
    outputs = sess.run(list(names), {INPUT_NAME: batch})  # type: ignore[attr-defined]
    return dict(zip(names, outputs, strict=True))


def max_abs_diffs(
    sess: object, ref: Reference, names: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Max abs difference per output over every reference input, and what the graph gave."""
    worst = dict.fromkeys(names, 0.0)
    outputs = {}
    for input_name, batch in ref.inputs.items():
        got = outputs[input_name] = run_session(sess, names, batch)
        for name in names:
            expected = ref.outputs[input_name][name]
            if got[name].shape != expected.shape:
                raise ParityError(
                    f"{name} on {input_name}: ONNX shape {got[name].shape}, "
                    f"PyTorch {expected.shape}"
                )
            worst[name] = max(worst[name], float(np.abs(got[name] - expected).max()))
    return worst, outputs


def check_gated(variant: str, sess: object, ref: Reference, names: tuple[str, ...]) -> Parity:
    """Measure ``variant`` against PyTorch; raise ``ParityError`` beyond its tolerance."""
    diffs, _ = max_abs_diffs(sess, ref, names)
    tolerance = TOLERANCE[variant]
    bad = {k: v for k, v in diffs.items() if k in PROBABILITY_OUTPUTS and not v <= tolerance}
    if bad:
        numbers = ", ".join(f"{k} max abs diff {v:.3g}" for k, v in diffs.items())
        raise ParityError(
            f"{variant} graph disagrees with PyTorch beyond {tolerance:g} on probabilities: "
            f"{numbers} (inputs: {', '.join(ref.inputs)})"
        )
    log.info("%s parity: %s", variant, diffs)
    return Parity(inputs=list(ref.inputs), max_abs_diff=diffs, tolerance=tolerance)


def top10_agreement(got: np.ndarray, expected: np.ndarray) -> float:
    """Mean fraction of the top-10 classes (per clip) that two score matrices share."""
    k = min(10, expected.shape[-1])
    top_got = np.argsort(-got, axis=-1)[:, :k]
    top_exp = np.argsort(-expected, axis=-1)[:, :k]
    shared = [len(set(a) & set(b)) for a, b in zip(top_got, top_exp, strict=True)]
    return float(np.mean(shared) / k)


def measure_int8(sess: object, ref: Reference, names: tuple[str, ...]) -> Parity:
    """int8 is not gated: report how far it is from PyTorch and how often the top-10 agree."""
    diffs, outputs = max_abs_diffs(sess, ref, names)
    agreements = [
        top10_agreement(outputs[key]["clipwise_output"], ref.outputs[key]["clipwise_output"])
        for key in ref.inputs
    ]
    agreement = float(np.mean(agreements))
    log.info("int8: max abs diff %s, top-10 agreement %.3f", diffs, agreement)
    return Parity(inputs=list(ref.inputs), max_abs_diff=diffs, top10_agreement=agreement)
