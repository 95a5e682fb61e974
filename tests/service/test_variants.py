"""Bundle variants on the CPU provider: PANNS_PRECISION picks fp32, fp16 or int8."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.backends import BackendOptions
from service.core.backends.ort import CPU, OrtBackend
from service.core.card import read_card
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    files,
    metric_total,
    noise,
    parse_metrics,
    settings_for,
)

pytestmark = pytest.mark.slow


def test_auto_precision_on_cpu_is_fp32_even_with_variants(variants_bundle: Path) -> None:
    assert set(read_card(variants_bundle).files) == {"fp32", "fp16", "int8"}
    engine = OrtBackend(variants_bundle, BackendOptions(device="cpu", threads=1))
    assert (engine.provider, engine.precision) == (CPU, "fp32")


@pytest.mark.parametrize(("precision", "atol"), [("fp16", 0.02), ("int8", 0.25)])
def test_explicit_variant_runs_and_stays_close_to_fp32(
    variants_bundle: Path, precision: str, atol: float
) -> None:
    fp32 = OrtBackend(variants_bundle, BackendOptions(device="cpu", threads=1))
    other = OrtBackend(
        variants_bundle,
        BackendOptions(
            device="cpu",
            precision=precision,  # type: ignore[arg-type]
            threads=1,
        ),
    )
    assert other.precision == precision
    x = np.stack([noise(3.0, seed=s) for s in (1, 2)])
    a, b = fp32.run(x)["clipwise"], other.run(x)["clipwise"]
    assert b.dtype == np.float32 and b.shape == a.shape and np.isfinite(b).all()
    assert np.max(np.abs(a - b)) < atol


def test_service_reports_the_variant_in_use(variants_bundle: Path) -> None:
    server = LiveServer(settings_for(variants_bundle, precision="int8")).start()
    try:
        with server.client() as c:
            model = c.get("/v1/models").json()["models"][0]
            r = c.post("/v1/tag", files=files(("a.wav", encode(noise(2.0, 3), RATE))))
            m = parse_metrics(httpx.get(f"{server.url}/metrics").text)
    finally:
        server.stop()
    assert model["precision"] == "int8" and model["provider"] == CPU
    assert r.status_code == 200 and r.json()["model"]["precision"] == "int8"
    assert metric_total(m, "panns_model_info", precision="int8", provider=CPU) == 1


def test_readiness_reports_a_missing_variant(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, precision="fp16")).start(wait_ready=False)
    try:
        for _ in range(200):
            body = httpx.get(f"{server.url}/readyz").json()
            if body["status"] != "loading":
                break
            time.sleep(0.05)
    finally:
        server.stop()
    assert body["status"] == "failed" and "PANNS_PRECISION=fp16" in body["error"]


def test_service_with_two_batches_in_flight_answers_like_one(tagger_bundle: Path) -> None:
    """PANNS_INFLIGHT_BATCHES=2 on the CPU: two engine threads, the same scores."""
    body = files(*[(f"{i}.wav", encode(noise(25.0, seed=i), RATE)) for i in range(3)])
    scores = {}
    for inflight in (1, 2):
        server = LiveServer(settings_for(tagger_bundle, inflight_batches=inflight, max_batch=2))
        server.start()
        try:
            runtime = server.app.state.tagger.models.get()
            assert (runtime.backend.inflight, runtime.batcher.inflight) == (inflight, inflight)
            with server.client() as c:
                r = c.post("/v1/tag", files=body)
        finally:
            server.stop()
        assert r.status_code == 200, r.text
        scores[inflight] = [f["scores"] for f in r.json()["results"]]
    np.testing.assert_allclose(scores[1], scores[2], atol=1e-6)
