"""PyTorch model -> float32 ONNX graph, from raw waveform to the model's outputs.

Exporter choice: the TorchScript tracer (``torch.onnx.export(..., dynamo=False)``), not the
dynamo exporter that torch 2.13 uses by default. Measured on this project's models:

* The dynamo exporter cannot export the decision-level (SED) models with a dynamic number of
  samples: padding ``framewise_output`` to the log-mel frame count makes ``torch.export``'s
  symbolic shape solver fail (``NotImplementedError: The inequality ... cannot be solved``).
* The tracer records the shape arithmetic (frames, padding, repeat counts) as ONNX
  ``Shape``/``Gather``/``Tile`` nodes, so one graph serves every batch size and length; the
  parity check in :mod:`model_export.verify` proves that on lengths other than the traced one.
* The tracer's output is byte-for-byte deterministic (names come from module scopes, e.g.
  ``/model/logmel_extractor/Log``) and takes about a second instead of ten.

``torch.log10`` is exported as ``Log`` / ``log(10)`` and ``clamp(min=amin)`` as ``Clip``, both
valid on every opset we target, so the log-mel front-end sits inside the graph.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from model_export.rewrite import trim_spectrum

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "waveform"
WRAPPER_SCOPE = "model"  # node names start with /model/...; initializers with model.
# Module scopes of the torchlibrosa front-end: these nodes must stay float32 (fp16) and are
# never quantized (int8): the power spectrum spans far more than fp16 or int8 can hold.
FRONTEND_SCOPES = ("spectrogram_extractor", "logmel_extractor")


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported graph fails verification."""


@dataclass(frozen=True)
class GraphSpec:
    """The zoo interface attributes a bundle needs (read once, typed)."""

    sample_rate: int
    min_samples: int
    classes_num: int
    output_names: tuple[str, ...]
    frames_per_second: float | None

    @classmethod
    def of(cls, model: nn.Module) -> GraphSpec:
        try:
            fps = getattr(model, "frames_per_second", None)
            return cls(
                sample_rate=int(getattr(model, "sample_rate")),  # noqa: B009
                min_samples=max(1, int(getattr(model, "min_samples"))),  # noqa: B009
                classes_num=int(getattr(model, "classes_num")),  # noqa: B009
                output_names=tuple(str(n) for n in getattr(model, "output_names")),  # noqa: B009
                frames_per_second=float(fps) if fps is not None else None,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            name = type(model).__name__
            raise ExportError(f"{name} lacks the zoo model interface: {exc}") from exc


class _TupleOutputs(nn.Module):
    """Waveform in, the model's outputs out as a tuple in ``output_names`` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model  # attribute name = WRAPPER_SCOPE
        self.output_names = GraphSpec.of(model).output_names

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(waveform)
        return tuple(outputs[name] for name in self.output_names)


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's warnings (python-side checks such as the too-short ValueError are
    evaluated once on the example input); the multi-length parity check is the real guard."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_onnx(model: nn.Module, path: Path, example_samples: int) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) and write the float32 graph to ``path``; return it."""
    model.eval()
    wrapper = _TupleOutputs(model).eval()
    names = list(wrapper.output_names)
    example = torch.zeros(1, example_samples, dtype=torch.float32)
    dynamic_axes = {INPUT_NAME: {0: "batch", 1: "samples"}}
    dynamic_axes.update({name: {0: "batch"} for name in names})
    if "framewise_output" in names:
        dynamic_axes["framewise_output"][1] = "frames"
    try:
        with _quiet_tracer(), torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types; report them uniformly
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    graph = onnx.load(str(path))
    trimmed = trim_spectrum(graph)
    if trimmed:
        log.info("dropped %d STFT bins the mel filterbank does not use", trimmed)
    normalise(graph)
    onnx.save(graph, str(path))
    return graph


def normalise(graph: onnx.ModelProto) -> None:
    """Make the file a function of the weights and the code only: drop doc strings (they may
    hold stack traces with local paths) and pin the producer fields."""
    graph.doc_string = ""
    graph.graph.doc_string = ""
    for node in graph.graph.node:
        node.doc_string = ""
    graph.producer_name = "panns-serve model_export"
    graph.producer_version = torch.__version__.split("+")[0]
    del graph.metadata_props[:]


def frontend_nodes(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the log-mel front-end (empty for waveform models)."""
    prefixes = tuple(f"/{WRAPPER_SCOPE}/{scope}/" for scope in FRONTEND_SCOPES)
    return [node.name for node in graph.graph.node if node.name.startswith(prefixes)]
