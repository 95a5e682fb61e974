"""The serving process's heaps: the collector's pauses are timed, what loaded is frozen."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from service.app import create_app
from service.core.heap import freeze_loaded_objects
from service.metrics import Metrics
from tests.service.conftest import metric_total, parse_metrics, settings_for


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # this test process goes on collecting as before


def test_freeze_leaves_loaded_objects_out_of_collections(unfrozen: None) -> None:
    loaded: list[list[int]] = [[] for _ in range(1000)]  # tracked containers alive "at start"
    freeze_loaded_objects()
    assert gc.get_freeze_count() >= len(loaded)
    walked = gc.get_objects()  # what a full collection walks: no longer the loaded ones
    assert not any(obj is loaded[0] for obj in walked)
    made_later: list[object] = []
    assert any(obj is made_later for obj in gc.get_objects())


def test_collections_are_timed_per_generation_once_flushed() -> None:
    metrics = Metrics()
    stop = metrics.time_gc()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        stop()
    unflushed = parse_metrics(generate_latest(metrics.registry).decode())
    assert metric_total(unflushed, "panns_gc_pause_seconds_count", generation="2") == 0
    metrics.flush_gc()
    seen = parse_metrics(generate_latest(metrics.registry).decode())
    assert metric_total(seen, "panns_gc_pause_seconds_count", generation="2") == 1
    assert metric_total(seen, "panns_gc_pause_seconds_count", generation="0") == 1
    assert metric_total(seen, "panns_gc_pause_seconds_sum", generation="2") > 0
    gc.collect()  # stopped: no longer timed
    metrics.flush_gc()
    after = parse_metrics(generate_latest(metrics.registry).decode())
    assert metric_total(after, "panns_gc_pause_seconds_count", generation="2") == 1


def test_a_request_done_reports_the_pauses_before_it() -> None:
    metrics = Metrics()
    stop = metrics.time_gc()
    try:
        gc.collect()
    finally:
        stop()
    metrics.request_done("/v1/tag", "m", 200, 0.01)
    seen = parse_metrics(generate_latest(metrics.registry).decode())
    assert metric_total(seen, "panns_gc_pause_seconds_count", generation="2") == 1


@pytest.mark.parametrize("broken", [False, True])
def test_the_app_calls_one_hook_once_loading_ends(
    broken: bool, tmp_path: Path, tagger_bundle: Path
) -> None:
    """``on_loaded`` once the models loaded, ``on_load_failure`` (only) when they cannot."""
    bundle = tagger_bundle
    if broken:
        bundle = Path(shutil.copytree(tagger_bundle, tmp_path / "broken"))
        next(bundle.glob("*.onnx")).write_bytes(b"not an onnx graph")
    calls: list[str] = []
    app = create_app(
        settings_for(bundle, warmup="none"),
        on_load_failure=lambda: calls.append("failed"),
        on_loaded=lambda: calls.append("loaded"),
    )
    with TestClient(app) as client:
        wait_until(lambda: bool(calls))
        assert client.get("/readyz").status_code == (503 if broken else 200)
    assert calls == (["failed"] if broken else ["loaded"])


def wait_until(ready: Callable[[], bool], timeout_s: float = 60) -> None:
    ends = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < ends, "timed out"
        time.sleep(0.05)
