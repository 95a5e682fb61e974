"""Prometheus metrics on a per-app registry (names agreed in the project's interfaces)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All the service's metrics; one instance per app so tests never share counters."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "panns_requests",
            "Requests by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "panns_request_duration_seconds",
            "Request latency",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "panns_queue_wait_seconds",
            "Time a window waited before its batch started",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "panns_compute_seconds",
            "Inference time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "panns_batch_size",
            "Windows per batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "panns_queue_depth",
            "Windows waiting in the batcher queue",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge("panns_inflight_requests", "Requests being served", registry=r)
        self.audio_seconds = Counter(
            "panns_audio_seconds",
            "Seconds of decoded audio processed",
            ["model"],
            registry=r,
        )
        self.decode_failures = Counter(
            "panns_decode_failures",
            "Uploads that could not be decoded, by reason",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "panns_model_info",
            "Loaded model (value 1)",
            ["model", "arch", "checksum", "provider", "precision"],
            registry=r,
        )
        self.dropped_windows = Counter(
            "panns_dropped_windows",
            "Queued windows dropped before inference, by reason",
            ["model", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
