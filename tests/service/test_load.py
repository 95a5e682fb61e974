"""Batching under concurrency, overload (503), deadlines (504), disconnects, readiness."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.core.card import read_card
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    engine_held,
    files,
    metric_total,
    noise,
    parse_metrics,
    run_bundle,
    settings_for,
    wait_held_queue,
)


def test_concurrent_clients_share_batches_and_get_their_own_results(
    tagger_bundle: Path,
) -> None:
    clients = 24
    clips = [noise(1.0, seed=100 + i) for i in range(clients)]
    server = LiveServer(settings_for(tagger_bundle, max_batch=8, max_delay_ms=50)).start()

    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        r = await client.post(
            "/v1/tag", params={"pad": "false"}, files=files((f"c{i}.wav", encode(clips[i], RATE)))
        )
        assert r.status_code == 200, r.text
        scores: list[float] = r.json()["results"][0]["scores"]
        return scores

    async def main() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return list(await asyncio.gather(*(one(client, i) for i in range(clients))))

    try:
        results = asyncio.run(main())
        m = parse_metrics(httpx.get(f"{server.url}/metrics").text)
    finally:
        server.stop()
    for clip, scores in zip(clips, results, strict=True):
        np.testing.assert_allclose(
            scores, run_bundle(tagger_bundle, clip)["clipwise"], atol=1e-4, rtol=0
        )
    assert len({round(r[0], 4) for r in results}) > clients // 2  # distinct clips, results
    name = read_card(tagger_bundle).name
    batches = metric_total(m, "panns_batch_size_count", model=name)
    assert metric_total(m, "panns_batch_size_sum", model=name) == clients
    assert batches < clients  # some batches held more than one window
    assert metric_total(m, "panns_batch_size_bucket", model=name, le="1.0") < batches


def _post_in_thread(url: str, data: bytes, out: list[httpx.Response], **params: str) -> None:
    out.append(
        httpx.post(f"{url}/v1/tag", params=params, files=files(("x.wav", data)), timeout=120)
    )


Scrape = dict[str, dict[Any, float]]


def _scrape(url: str, name: str) -> float:
    return metric_total(parse_metrics(httpx.get(f"{url}/metrics").text), name)


def _settled_metrics(url: str, windows: int, **labels: str) -> Scrape:
    """/metrics once ``windows`` windows either ran or were dropped from the queue: the
    batches running or stacked when the rest were dropped end after the answer went out."""
    deadline = time.monotonic() + 30
    while True:
        m = parse_metrics(httpx.get(f"{url}/metrics").text)
        done = metric_total(m, "panns_batch_size_sum", **labels) + metric_total(
            m, "panns_dropped_windows_total", **labels
        )
        if done >= windows:
            return m
        assert time.monotonic() < deadline, f"only {done} of {windows} windows ran or dropped"
        time.sleep(0.05)


def _wait_for_audio(url: str, seconds: float) -> None:
    """Until ``seconds`` of audio were decoded. In-process (``LiveServer``), a file counts
    in the same turn of the event loop that queues its windows: they are queued then."""
    deadline = time.monotonic() + 30
    while _scrape(url, "panns_audio_seconds_total") < seconds:
        assert time.monotonic() < deadline, "the audio was never decoded"
        time.sleep(0.01)


def _post_unread(url: str, data: bytes, **params: str | float) -> socket.socket:
    """Send a /v1/tag request with ``data`` over a plain socket and read no answer: the
    client leaves when the caller closes the socket, not after some timeout."""
    request = httpx.Request(
        "POST", f"{url}/v1/tag", params=params, files=files(("long.flac", data))
    )
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    line = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n"
    sock = socket.create_connection((request.url.host, request.url.port or 80))
    sock.sendall(f"{line}{head}\r\n".encode() + request.read())
    return sock


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    return encode(noise(120.0, seed=7), RATE, "FLAC", "PCM_16")  # 12 windows


def test_overload_answers_503_with_retry_after(tagger_bundle: Path, long_clip: bytes) -> None:
    server = LiveServer(
        settings_for(tagger_bundle, max_batch=1, max_delay_ms=0, max_queue=12)
    ).start()
    first: list[httpx.Response] = []
    worker = threading.Thread(target=_post_in_thread, args=(server.url, long_clip, first))
    try:
        # the engine is held while the second request comes: the queue cannot drain first
        with engine_held(server) as batcher:
            worker.start()
            assert wait_held_queue(batcher, 12) >= 1
            # 12 more windows fit only an empty queue of 12 (admitted, it would wait for
            # the hold: the timeout then ends the test)
            with server.client(timeout=30) as c:
                r = c.post("/v1/tag", files=files(("y.flac", long_clip)))
                huge = c.post(
                    "/v1/tag",
                    params={"window_s": 1, "hop_s": 1},
                    files=files(("z.wav", encode(noise(20.0, 9), RATE))),
                )
        worker.join()
        assert r.status_code == 503, r.text[:300]
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
        # 20 windows can never fit a queue of 12: refused at once, whatever the load
        assert huge.status_code == 413 and "at most 12" in huge.json()["error"]["message"]
        assert first[0].status_code == 200  # the accepted request was not disturbed
        with server.client() as c:
            again = c.post("/v1/tag", files=files(("y.wav", encode(noise(1.0, 8), RATE))))
        assert again.status_code == 200
    finally:
        server.stop()


def test_a_request_past_its_deadline_gets_504(tagger_bundle: Path, long_clip: bytes) -> None:
    server = LiveServer(settings_for(tagger_bundle, max_batch=1, timeout_s=1.0)).start()
    try:
        with server.client() as c:  # 111 windows (1 s hop): far more than 1 s of work
            r = c.post("/v1/tag", params={"hop_s": 1}, files=files(("long.flac", long_clip)))
            assert r.status_code == 504, r.text
            assert "PANNS_TIMEOUT_S" in r.json()["error"]["message"], r.text
            m = _settled_metrics(server.url, 111)
            ok = c.post(
                "/v1/tag",
                params={"pad": "false"},
                files=files(("s.wav", encode(noise(1.0, 9), RATE))),
            )
    finally:
        server.stop()
    assert ok.status_code == 200
    # every window either ran before the deadline or was dropped from the queue
    ran, dropped = (
        metric_total(m, "panns_batch_size_sum"),
        metric_total(m, "panns_dropped_windows_total"),
    )
    assert dropped >= 1 and ran + dropped == 111


def test_client_disconnect_drops_its_queued_windows(tagger_bundle: Path, long_clip: bytes) -> None:
    """Two clients give up; every window they queued that had not started is dropped.

    Batches take windows round-robin across requests, so both requests make progress until
    their clients leave; neither finishes."""
    server = LiveServer(
        settings_for(tagger_bundle, max_batch=1, max_delay_ms=0, max_windows=1000, max_queue=1000)
    ).start()
    name = read_card(tagger_bundle).name
    windows = 441  # 120 s with a 0.25 s hop: far more work than the clients wait for
    clients: list[socket.socket] = []
    try:
        for queued in (1, 2):  # each client leaves only once its windows were queued
            clients.append(_post_unread(server.url, long_clip, hop_s=0.25))
            _wait_for_audio(server.url, 120.0 * queued)
        for client in reversed(clients):  # the second one leaves first
            client.close()
        m = _settled_metrics(server.url, 2 * windows, model=name)
    finally:
        for client in clients:
            client.close()
        server.stop()
    ran = metric_total(m, "panns_batch_size_sum", model=name)
    dropped = metric_total(m, "panns_dropped_windows_total", model=name, reason="cancelled")
    assert ran < windows  # not even one of the requests could have finished ...
    assert dropped == 2 * windows - ran  # ... and every window that did not run was dropped
    assert metric_total(m, "panns_queue_depth", model=name) == 0


def test_not_ready_before_warm_up(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, warmup="all", max_batch=6))
    server.start(wait_ready=False)
    try:
        with server.client() as c:
            early = c.get("/readyz")
            tag = c.post("/v1/tag", files=files(("a.wav", encode(noise(1.0, 3), RATE))))
            alive = c.get("/healthz")
        deadline = time.monotonic() + 180
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        late = httpx.get(f"{server.url}/readyz").json()
    finally:
        server.stop()
    assert early.status_code == 503 and early.json()["status"] == "loading"
    assert "retry-after" in early.headers
    assert tag.status_code == 503 and tag.json()["error"]["code"] == "not_ready"
    assert alive.status_code == 200
    assert late["status"] == "ready" and late["models"] == [read_card(tagger_bundle).name]
