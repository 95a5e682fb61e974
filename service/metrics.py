"""Prometheus metrics on a per-app registry (names agreed in the project's interfaces).

Requests are counted by endpoint, model and status; the probes (``/metrics``, ``/healthz``,
``/readyz``) are not API traffic and are left out. Each model's 5xx series of the inference
endpoints start at 0 when the model registers, so ``rate()`` and ``increase()`` see the
first error of a series (a counter born at 1 has no earlier sample to differ from).
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.core.backends import Backend
from service.core.card import ModelCard
from service.core.models import ObserverFactory

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_MODEL = ("model",)

# The endpoints that run inference: the only requests counted in flight.
INFERENCE_ENDPOINTS = ("/v1/tag", "/v1/embed", "/v1/detect")
OIP_INFER = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
# Probes and scrapes: not counted in panns_requests_total nor the latency histogram.
UNCOUNTED_PATHS = frozenset(
    {"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
)


def is_inference(path: str) -> bool:
    """An inference request (counted in flight): /v1 tag/embed/detect or an OIP infer."""
    return path in INFERENCE_ENDPOINTS or (
        path.startswith("/v2/models/") and path.endswith("/infer")
    )


# Series started at 0, so that a dashboard's rate() sees their first increase.
DROP_REASONS = ("cancelled", "deadline", "failed", "stopped")
DECODE_FAILURES = (
    "invalid_audio",
    "empty_audio",
    "undecodable_audio",
    "unsupported_format",
    "audio_too_long",
    "audio_too_short",
)
# Server errors an inference request can get; their series exist from the start at 0.
SERVER_ERRORS = ("500", "503", "504")


class Metrics:
    """All the service's metrics; one instance per app so tests never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._shared: CollectorRegistry | None = None  # every process's, built at 1st scrape
        # Process CPU, memory and open files, the Python version and GC (as the default
        # registry has them), on this app's own registry.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = self._counter(
            "panns_requests",
            "Requests by endpoint, model and status",
            ("endpoint", "model", "status"),
        )
        self.request_duration = self._histogram(
            "panns_request_duration_seconds",
            "Request latency by endpoint, model and status",
            ("endpoint", "model", "status"),
        )
        self.queue_wait = self._histogram(
            "panns_queue_wait_seconds",
            "Time a window waited before its batch started",
            _MODEL,
        )
        self.compute = self._histogram("panns_compute_seconds", "Inference time per batch", _MODEL)
        self.batch_size = self._histogram(
            "panns_batch_size", "Windows per batch", _MODEL, _BATCH_BUCKETS
        )
        self.queue_depth = self._gauge(
            "panns_queue_depth", "Windows waiting in the batcher queue", _MODEL
        )
        self.inflight = self._gauge(
            "panns_inflight_requests",
            "Inference requests being served (tag, embed, detect)",
            (),
            mode="livesum",
        )
        self.audio_seconds = self._counter(
            "panns_audio_seconds", "Seconds of decoded audio processed", _MODEL
        )
        self.decode_failures = self._counter(
            "panns_decode_failures", "Uploads that could not be decoded, by reason", ("reason",)
        )
        for code in DECODE_FAILURES:
            self.decode_failures.labels(code)
        self.model_info = self._gauge(
            "panns_model_info",
            "Loaded model (value 1)",
            ("model", "arch", "checksum", "provider", "precision"),
            mode="max",
        )
        self.dropped_windows = self._counter(
            "panns_dropped_windows",
            "Queued windows dropped before inference, by reason",
            ("model", "reason"),
        )
        self.open_streams = self._gauge(
            "panns_open_streams", "WebSocket streams open", (), mode="livesum"
        )
        self.stream_seconds = self._counter(
            "panns_stream_audio_seconds", "Seconds of audio received on streams", _MODEL
        )
        self.stream_skipped = self._counter(
            "panns_stream_skipped_windows",
            "Stream windows dropped because the engine fell behind",
            _MODEL,
        )
        self.gc_pause = self._histogram(
            "panns_gc_pause_seconds",
            "Python's cyclic garbage collections (no request moves meanwhile), by generation",
            ("generation",),
            _GC_BUCKETS,
        )
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)
        self._gc_pauses: deque[tuple[int, float]] = deque(maxlen=4096)

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], mode: str = "livesum") -> Gauge:
        # mode: how prometheus-client combines the processes' values (PANNS_WORKERS > 1)
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)  # type: ignore[arg-type]

    def _histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = _LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def request_done(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.flush_gc()
        code = str(status)
        self.requests.labels(endpoint, model, code).inc()
        self.request_duration.labels(endpoint, model, code).observe(seconds)

    def model_registered(self, model: str) -> None:
        """Start the model's server-error series of the inference endpoints at 0."""
        for endpoint in (*INFERENCE_ENDPOINTS, *OIP_INFER):
            for status in SERVER_ERRORS:
                self.requests.labels(endpoint, model, status)
        for reason in DROP_REASONS:
            self.dropped_windows.labels(model, reason)

    def file_done(self, model: str, seconds: float) -> None:
        self.audio_seconds.labels(model).inc(seconds)

    def file_failed(self, code: str) -> None:
        self.decode_failures.labels(code).inc()

    def time_gc(self) -> Callable[[], None]:
        """Time this process's garbage collections into ``panns_gc_pause_seconds`` (a
        serving process calls it once); returns the function that stops it.

        A collection can start at any allocation, also inside prometheus-client's own
        (non-reentrant) locks, so the callback only appends to a deque; the pauses are
        observed at the next request or batch done, or scrape (``flush_gc``)."""
        started = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self._gc_pauses.append((info["generation"], time.perf_counter() - started[0]))

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)

    def flush_gc(self) -> None:
        while self._gc_pauses:
            generation, pause = self._gc_pauses.popleft()
            self.gc_pause.labels(str(generation)).observe(pause)

    def render(self) -> bytes:
        """This process's metrics, or every process's when several serve (multiprocess)."""
        self.flush_gc()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        if self._shared is None:
            self._shared = CollectorRegistry()
            MultiProcessCollector(self._shared, path=directory)
            self._shared.register(ServiceProcesses(directory))
        return generate_latest(self._shared)


class ServiceProcesses(Collector):
    """process_* metrics summed over the service's live processes (PANNS_WORKERS > 1): the
    processes are those with metric files in the multiprocess directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _pids(self) -> set[int]:
        pids = set()
        for name in os.listdir(self.directory):
            stem = name.rsplit(".", 1)[0].rsplit("_", 1)[-1]
            if stem.isdigit() and os.path.exists(f"/proc/{stem}"):
                pids.add(int(stem))
        return pids

    def collect(self) -> Iterator[Metric]:
        totals: dict[str, float] = {}
        for pid in self._pids():
            one = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in one.collect():
                if family.name in _SUMMED:
                    totals[family.name] = totals.get(family.name, 0.0) + family.samples[0].value
        for name, value in totals.items():
            doc = _SUMMED[name] + " (all the service's processes)"
            if name.endswith("cpu_seconds"):
                yield CounterMetricFamily(name, doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)


_SUMMED = {
    "process_cpu_seconds": "Total user and system CPU time spent in seconds",
    "process_resident_memory_bytes": "Resident memory size in bytes",
    "process_virtual_memory_bytes": "Virtual memory size in bytes",
    "process_open_fds": "Number of open file descriptors",
}


class BatchMetrics:
    """Feeds one model's batcher events into the Prometheus metrics (a ``BatchObserver``).

    The model's labelled series are looked up once, not at every batch."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics, self.model = metrics, model
        self.sizes = metrics.batch_size.labels(model)
        self.computes = metrics.compute.labels(model)
        self.waits = metrics.queue_wait.labels(model)
        self.depth = metrics.queue_depth.labels(model)
        self.depth.set(0)

    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None:
        self.metrics.flush_gc()  # the engine process serves no request: its pauses go here
        self.sizes.observe(size)
        self.computes.observe(compute_s)
        for wait in waits:
            self.waits.observe(wait)

    def depth_changed(self, depth: int) -> None:
        self.depth.set(depth)

    def dropped(self, reason: str, count: int) -> None:
        self.metrics.dropped_windows.labels(self.model, reason).inc(count)


def observer_factory(metrics: Metrics) -> ObserverFactory:
    """The ``ObserverFactory`` the tagger calls for each model it loads."""

    def observe(card: ModelCard, backend: Backend) -> BatchMetrics:
        metrics.model_info.labels(
            card.name, card.arch, card.checksum, backend.provider, backend.precision
        ).set(1)
        metrics.model_registered(card.name)
        return BatchMetrics(metrics, card.name)

    return observe
