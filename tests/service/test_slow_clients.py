"""Slow and endless clients over HTTP: a body that stalls or dribbles in, a request head that
never ends. Each gets its answer (408, 431) within the configured time and the service serves on."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from pathlib import Path

import httpx

from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    files,
    service_process,
    settings_for,
    sine,
)


def _endless_head(port: int) -> bytes:
    """A header value that never ends, sent in 4 KiB pieces: what comes back before the
    server closes the connection (it must not buffer the head without limit)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(2048):  # up to 8 MiB
            try:
                s.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([s], [], [], 0)[0]:
                break
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                reply += chunk
    return reply


def test_stalled_uploads_and_huge_headers_are_cut_off(tagger_bundle: Path) -> None:
    """Through ``python -m service`` (its uvicorn settings): a body that stops arriving gets
    408 after PANNS_IDLE_TIMEOUT_S; a request head over PANNS_MAX_HEADER_KB is refused."""
    with service_process(tagger_bundle, warmup="none", idle_timeout_s=1, max_header_kb=16) as svc:
        url, port = svc.url, svc.port
        head = (
            b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 5000000\r\n\r\n--b\r\nContent-Disposition: "
            b'form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\x00" * 65536
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            started = time.monotonic()
            s.sendall(head)  # ... and then nothing more
            reply = s.recv(4096)
            waited = time.monotonic() - started
            while chunk := s.recv(4096):  # the server closes the connection after it
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"upload_timeout" in reply and 0.8 < waited < 20
        r = httpx.get(f"{url}/healthz", headers={"X-Big": "a" * 100_000}, timeout=30)
        assert r.status_code == 431, r.status_code
        assert r.json()["error"]["code"] == "headers_too_large"
        assert _endless_head(port).startswith(b"HTTP/1.1 431")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_body_that_dribbles_in_gets_408_after_the_total_time(tagger_bundle: Path) -> None:
    """Never idle for long, yet never done: PANNS_UPLOAD_TIMEOUT_S bounds the whole body."""
    live = LiveServer(settings_for(tagger_bundle, idle_timeout_s=1.0, upload_timeout_s=2.0)).start()
    head = (
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
            started = time.monotonic()
            s.sendall(head)
            while not select.select([s], [], [], 0.3)[0]:  # a few bytes every 0.3 s
                assert time.monotonic() - started < 15, "no answer to a dribbling body"
                s.sendall(b"\x00" * 100)
            waited = time.monotonic() - started
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(4096):
                    reply += chunk
        with live.client() as c:
            ok = c.post("/v1/tag", files=files(("ok.wav", encode(sine(440, 2.0, RATE), RATE))))
            assert ok.status_code == 200, ok.text
    finally:
        live.stop()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"upload_timeout" in reply and 1.8 < waited < 6
