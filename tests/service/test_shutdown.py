"""SIGTERM: stop accepting, finish every accepted request, exit cleanly (real subprocess)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.app import _drainer
from service.core.tagger import Tagger
from service.settings import Settings
from tests.service.conftest import (
    RATE,
    encode,
    files,
    metric_total,
    noise,
    parse_metrics,
    service_process,
)

pytestmark = pytest.mark.slow


def wait_handed_over(url: str, audio_s: float) -> None:
    """Until the fronts decoded ``audio_s`` seconds of audio (every request's) and the
    engine has windows queued. A front counts a file in ``panns_audio_seconds_total`` in the
    turn of its event loop that hands the file's windows to its engine client, so a drain
    that SIGTERM starts later waits for them (a request handed over after the drain began
    would get 503); the queue depth then says the engine has work left to drain (it reaches
    the engine's batcher a little after the count)."""
    deadline = time.monotonic() + 60
    metrics = f"{url}/metrics"
    while True:
        m = parse_metrics(httpx.get(metrics).text)
        audio, depth = (
            metric_total(m, "panns_audio_seconds_total"),
            metric_total(m, "panns_queue_depth"),
        )
        if audio >= audio_s and depth >= 1:
            return
        assert time.monotonic() < deadline, (
            f"{audio} s of {audio_s} s decoded, {depth} windows queued: the requests never "
            "reached the engine, or it ran them all before they had all been handed over"
        )
        time.sleep(0.01)


def wait_refused(url: str, within: float) -> None:
    """Until a new connection to ``url`` fails (a ``TransportError``); the test fails when
    the service still answers ``within`` seconds from now."""
    deadline = time.monotonic() + within
    while True:
        try:
            r = httpx.get(url, timeout=2)
        except httpx.TransportError:
            return
        assert time.monotonic() < deadline, (
            f"{url} still answered {r.status_code} {within:g} s after SIGTERM"
        )
        time.sleep(0.02)


def test_sigterm_drains_accepted_requests(tagger_bundle: Path) -> None:
    with service_process(tagger_bundle, max_batch=1, warmup="none") as svc:
        url = svc.url
        # 41 windows each, decoded into the fronts' arenas: they reach the engine uncopied
        data = encode(noise(30.0, seed=20), RATE, "WAV", "PCM_16")
        results: list[int] = []

        def post(index: int) -> None:
            r = httpx.post(
                f"{url}/v1/tag",
                params={"hop_s": 0.5},
                files=files(("a.wav", data)),
                timeout=120,
                headers={"X-Request-ID": f"drain-{index}"},
            )
            results.append(r.status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        wait_handed_over(url, 4 * 30.0)  # all four with the engine, which has work left
        svc.proc.send_signal(signal.SIGTERM)
        # no longer accepting new connections (0.1 s here; 10 s leaves room for a loaded machine)
        wait_refused(f"{url}/healthz", within=10)
        for t in threads:
            t.join(120)
        code = svc.proc.wait(60)
    output = svc.output()
    assert results == [200, 200, 200, 200], output[-3000:]
    assert code == 0, output[-3000:]  # a clean drain exits 0, not by the signal
    assert "Application shutdown complete" in output
    access = [
        json.loads(line)
        for line in output.splitlines()
        if line.startswith("{") and '"service.access"' in line
    ]
    ids = {entry["request_id"] for entry in access if entry["path"] == "/v1/tag"}
    assert ids == {f"drain-{i}" for i in range(4)}
    drained = [e for e in access if e["request_id"] in ids]
    assert all(e["status"] == 200 and e["duration_ms"] > 0 for e in drained)


def test_work_left_at_the_end_of_the_grace_time_gets_json_503(tagger_bundle: Path) -> None:
    answers: list[httpx.Response] = []
    windows = 401  # 30 s with a 0.05 s hop; 1604 in all: tens of seconds of work, not 1 s
    with service_process(
        tagger_bundle,
        max_batch=1,
        warmup="none",
        graceful_timeout_s=2,  # each front drains for about 1 s, then answers 503
        max_windows=windows,
        max_queue=4 * windows,
    ) as svc:
        url = svc.url
        # decoded into the fronts' arenas (a WAV under 32 s): its windows reach the engine
        # uncopied, not as a payload that a drain would wait behind
        data = encode(noise(30.0, seed=21), RATE, "WAV", "PCM_16")

        def post() -> None:
            answers.append(
                httpx.post(
                    f"{url}/v1/tag",
                    params={"hop_s": 0.05},
                    files=files(("a.wav", data)),
                    timeout=120,
                )
            )

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        wait_handed_over(url, 4 * 30.0)
        svc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = svc.proc.wait(60)
    output = svc.output()
    statuses = sorted(r.status_code for r in answers)
    assert len(answers) == 4 and 503 in statuses, (statuses, output[-2000:])
    for r in answers:
        assert r.headers["content-type"].startswith("application/json"), r.text
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "shutting_down"
            assert r.headers["retry-after"]
        else:
            assert r.status_code == 200
    assert code == 0, output[-3000:]


def test_a_model_that_cannot_load_fails_liveness_and_exits_1(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    """The card reads, but the graph is damaged: the load fails in the background; /healthz
    then says 503 (liveness fails) and the process ends with status 1 for its supervisor."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tagger_bundle, broken)
    graph = broken / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated: the SHA-256 check fails
    with service_process(broken, workers=1, wait_ready=False) as svc:
        code = svc.proc.wait(60)
    output = svc.output()
    assert code == 1, output[-2000:]
    assert "loading models failed" in output and "truncated" in output


def test_liveness_fails_once_loading_failed(tagger_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from tests.service.conftest import LiveServer, settings_for

    broken = tmp_path / "broken"
    shutil.copytree(tagger_bundle, broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    server = LiveServer(settings_for(broken)).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/healthz").status_code != 503:
            assert time.monotonic() < deadline, "liveness never failed"
            time.sleep(0.05)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
    finally:
        server.stop()


class DrainFails(Tagger):
    """A tagger whose drain stops it, then fails (no real one fails on demand)."""

    async def close(self, timeout_s: float | None = None) -> None:
        await super().close(timeout_s)
        raise RuntimeError("the drain broke")


def test_a_failed_drain_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM's drain task is awaited by no one: its failure must reach the log."""

    async def sigterm_twice(begin: Callable[[], None]) -> list[str]:
        begin()
        begin()  # a second SIGTERM starts nothing more
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.wait(tasks)
        return [t.get_name() for t in tasks]

    with caplog.at_level(logging.ERROR):
        begin = _drainer(DrainFails(settings=Settings(models="unused")), grace_s=2.0)
        assert asyncio.run(sigterm_twice(begin)) == ["drain"]
        del begin
        gc.collect()  # a task whose exception nobody retrieved complains when collected
    failed = [r for r in caplog.records if r.name == "service.app"]
    assert [r.getMessage() for r in failed] == ["draining failed"]
    assert failed[0].exc_info is not None and "the drain broke" in str(failed[0].exc_info[1])
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def wait_inflight(url: str, count: int) -> None:
    """Until ``count`` inference requests are in the app (``panns_inflight_requests``): the
    middleware counts a request in the turn of the event loop that starts its handler, which
    runs on until it waits for the body."""
    deadline = time.monotonic() + 30
    while (
        metric_total(parse_metrics(httpx.get(f"{url}/metrics").text), "panns_inflight_requests")
        < count
    ):
        assert time.monotonic() < deadline, "the request never reached the app"
        time.sleep(0.01)


def test_an_upload_still_arriving_at_sigterm_is_answered(tagger_bundle: Path) -> None:
    """SIGTERM while a request's body is on its way: uvicorn lets the connection finish, and
    the drain waits for the request (it was accepted) before stopping the batchers and the
    decoding threads. It used to stop them at once: the FLAC (decoded in a thread) then met
    a shut-down thread pool, a 500 ``internal_error``."""
    data = encode(noise(20.0, seed=22), RATE, "FLAC", "PCM_16")
    half = len(data) // 2
    with service_process(tagger_bundle, workers=1, warmup="none") as svc:
        url = svc.url
        with socket.create_connection(("127.0.0.1", svc.port), timeout=60) as sock:
            head = (
                f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1:{svc.port}\r\n"
                f"Content-Type: audio/flac\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + data[:half])
            wait_inflight(url, 1)  # accepted: its handler waits for the rest of the body
            svc.proc.send_signal(signal.SIGTERM)
            wait_refused(f"{url}/healthz", within=10)  # the drain has begun
            sock.sendall(data[half:])
            reply = b""
            while chunk := sock.recv(1 << 16):
                reply += chunk
        code = svc.proc.wait(60)
    output = svc.output()
    head_bytes, _, body = reply.partition(b"\r\n\r\n")
    status = head_bytes.split(b"\r\n", 1)[0].decode()
    assert status.split()[1] == "200", (status, body[:500], output[-3000:])
    results = json.loads(body)["results"]
    assert len(results) == 1 and results[0]["top"], body[:500]
    assert code == 0, output[-3000:]
