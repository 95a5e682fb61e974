"""Service settings, read from the environment (prefix ``PANNS_``) by ``get_settings()``.

Nothing reads the environment at import time: ``create_app`` takes a ``Settings`` object,
so tests and embedders build their own.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_list(value: str) -> list[str]:
    """A comma-separated setting's items (blanks dropped)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core node gets 2), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class Settings(BaseSettings):
    """Every knob of the service; the README documents each with its default."""

    model_config = SettingsConfigDict(env_prefix="PANNS_", extra="ignore", frozen=True)

    # What is served, and on what.
    models: str = Field(
        default="models/cnn14", description="bundle dirs, comma-separated; first=default"
    )
    backend: str = Field(default="onnxruntime", description="the engine: onnxruntime | oip")
    engine_url: str = Field(default="", description="oip backend: URL of the engine tier")
    engine_socket: str = Field(
        default="", description="internal: the engine process's socket (set by the supervisor)"
    )
    engine_api_key: SecretStr = Field(
        default=SecretStr(""), description="oip backend: the API key the engine tier wants"
    )
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    threads: int = Field(
        default=0, ge=0, description="ORT intra-op threads on CPU (0 = ORT default)"
    )
    warmup: Literal["auto", "none", "ends", "all"] = Field(
        default="auto",
        description="batch sizes run at start-up: ends (1 and max_batch), all (1..max_batch); "
        "auto = all on CUDA, ends on CPU",
    )
    inflight_batches: int = Field(
        default=0,
        ge=0,
        le=2,
        description="batches the engine runs at once (0 = 2 on CUDA, 1 on CPU)",
    )
    ort_pad_batches: bool = Field(
        default=True,
        description="CUDA: pad each batch with zero rows up to a power of two (or max_batch), "
        "one session per size, so cuDNN plans each shape once (not on every change of size)",
    )
    ort_cudnn_search: Literal["exhaustive", "heuristic", "default"] = Field(
        default="exhaustive",
        description="CUDA: how cuDNN picks each convolution's algorithm whenever a session's "
        "input shape changes: exhaustive (benchmarks the candidates), heuristic (its first "
        "guess, cheap to re-plan), default (cuDNN's fallback engines)",
    )
    ort_prefer_nhwc: bool = Field(
        default=False,
        description="CUDA: run convolutions channels-last (NHWC), the layout of cuDNN's fp16 "
        "tensor-core kernels, instead of transposing around each",
    )
    ort_cuda_graph: bool = Field(
        default=False, description="CUDA: replay a captured CUDA graph for full batches"
    )
    ort_tensorrt: bool = Field(
        default=False, description="CUDA: the TensorRT provider (fp16) where ONNX Runtime has it"
    )
    ort_trt_cache_dir: str = Field(
        default="", description="TensorRT engine cache ('' = <tmp>/panns-serve-trt)"
    )
    verify_bundles: bool = Field(
        default=True, description="check every bundle file's SHA-256 at start"
    )
    # The HTTP server.
    host: str = Field(default="127.0.0.1", description="0.0.0.0 to listen on every interface")
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default=0, ge=0, le=256, description="HTTP/decode processes (0 = the usable cores)"
    )
    api_keys: SecretStr = Field(
        default=SecretStr(""), description="comma-separated; empty = no authentication"
    )
    public_docs: bool = Field(
        default=False,
        description="serve /docs, /redoc and /openapi.json without a key when keys are set",
    )
    web_ui: bool = Field(default=True, description="serve the page at GET /")
    graceful_timeout_s: int = Field(default=30, ge=1, description="SIGTERM drain limit")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Batching.
    max_batch: int = Field(default=16, ge=1, le=1024, description="windows per batch")
    max_delay_ms: float = Field(default=5.0, ge=0, description="how long a batch may wait to fill")
    max_queue: int = Field(
        default=512, ge=1, description="windows waiting before requests are refused"
    )
    # What one request may cost.
    max_upload_mb: float = Field(default=50.0, gt=0, description="request body limit")
    max_files: int = Field(default=32, ge=1, description="files per request")
    max_audio_s: float = Field(default=600.0, gt=0, description="decoded duration limit per file")
    max_request_audio_s: float = Field(
        default=1800.0, gt=0, description="decoded duration limit per request, all files"
    )
    max_windows: int = Field(
        default=128,
        ge=1,
        description="model windows per request, all files (the cost bound); by length too, in "
        "the model's own windows (a 60 s window counts as six of 10 s)",
    )
    min_hop_s: float = Field(default=0.05, gt=0, description="the smallest hop_s accepted")
    max_response_values: int = Field(
        default=2_000_000, ge=1000, description="frame scores a /v1/detect result may hold"
    )
    timeout_s: float = Field(default=60.0, gt=0, description="deadline per request, after upload")
    upload_timeout_s: float = Field(
        default=120.0, gt=0, description="longest time a request body may take to arrive"
    )
    idle_timeout_s: float = Field(
        default=15.0, gt=0, description="longest pause while a request body arrives"
    )
    max_header_kb: int = Field(default=64, ge=1, description="request line + headers limit")
    # Live streams (WS /v1/stream).
    max_streams: int = Field(default=32, ge=0, description="open WebSocket streams")
    max_frame_kb: int = Field(default=1024, ge=1, description="largest WebSocket message")
    stream_idle_s: float = Field(default=30.0, gt=0, description="close a silent stream after")

    @property
    def model_dirs(self) -> list[Path]:
        return [Path(part) for part in split_list(self.models)]

    @property
    def api_key_list(self) -> list[str]:
        return split_list(self.api_keys.get_secret_value())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def worker_count(self) -> int:
        return self.workers or usable_cores()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached after the first call)."""
    return Settings()
