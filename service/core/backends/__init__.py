"""The ``Backend`` protocol and the registry of backends by name.

A backend runs batches of waveforms through one bundle's graph on one device. It knows
nothing of HTTP or batching. A new runtime (OpenVINO, TensorRT, a remote OIP server) is a new
module here and one line in ``BACKENDS``; nothing else in the service changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.core.card import ModelCard, OutputKind

Device = Literal["auto", "cuda", "cpu"]
# A stacked (B, L) float32 batch, or its B windows of L samples (for a backend that ``stages``).
BatchInput = np.ndarray | Sequence[np.ndarray]
Precision = Literal["auto", "fp32", "fp16", "int8"]
CudnnSearch = Literal["exhaustive", "heuristic", "default"]


@dataclass(frozen=True)
class BackendOptions:
    device: Device = "auto"
    precision: Precision = "auto"
    threads: int = 0  # intra-op threads on CPU (0: the runtime's default)
    verify: bool = True  # check every bundle file's SHA-256 before loading
    url: str = ""  # for remote backends: where the engine tier listens
    api_key: str = ""  # for remote backends: the engine tier's API key
    timeout_s: float = 60.0  # for remote backends: how long one batch may take
    # The GPU engine (ignored on CPU); see README "GPU engine".
    inflight: int = 0  # batches run at once (0: 2 on CUDA, 1 on CPU)
    cuda_graph: bool = False  # replay a captured CUDA graph for full (max_batch) batches
    tensorrt: bool = False  # TensorRT execution provider (fp16) where ORT offers it
    trt_cache_dir: str = ""  # TensorRT engine cache ("" = <tmp>/panns-serve-trt)
    pad_batches: bool = True  # CUDA: pad batches up to a few sizes (needs max_batch)
    cudnn_search: CudnnSearch = "exhaustive"  # CUDA: how cuDNN picks conv algorithms
    prefer_nhwc: bool = False  # CUDA: channels-last convolutions (ORT's prefer_nhwc)
    max_batch: int = 0  # the full batch: the CUDA graph's shape, TensorRT's profile (0: unknown)
    max_window_s: float = 60.0  # the longest window (pipeline.MAX_WINDOW_S): TensorRT's profile


class Backend(Protocol):
    """One loaded bundle on one device."""

    card: ModelCard
    device: str  # what it runs on: "cuda" or "cpu"
    provider: str  # the runtime's own name for it (e.g. CUDAExecutionProvider)
    precision: str  # the graph variant in use: fp32, fp16 or int8
    kinds: dict[str, OutputKind]  # graph output name -> kind
    inflight: int  # how many ``run`` calls may proceed at once (the batcher's engine threads)
    # True: ``run`` copies every batch into a buffer of its own (pinned staging for a GPU), so
    # it takes the windows unstacked: one copy of each instead of a stacked one and its copy.
    stages: bool

    def run(self, batch: BatchInput) -> dict[str, np.ndarray]:
        """Run a (B, L) float32 batch (or its windows); float32 outputs keyed by kind
        (clipwise, ...)."""
        ...

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        """Run each batch shape once so the first real request pays no set-up cost."""
        ...


# name -> "module:factory"; a factory is called as factory(bundle_dir, options).
BACKENDS: dict[str, str] = {
    "onnxruntime": "service.core.backends.ort:OrtBackend",
    "oip": "service.core.backends.oip:OipBackend",
}


def load_backend(name: str, bundle_dir: Path | str, options: BackendOptions) -> Backend:
    """Import the backend ``name`` lazily (so an absent runtime costs nothing) and load."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    backend: Backend = factory(bundle_dir, options)
    return backend
