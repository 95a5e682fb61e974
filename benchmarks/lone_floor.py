"""A lone upload's round trip: the service against what any Python ASGI server here costs.

Three servers under the same uvicorn (httptools, uvloop), started from this module, each sent
the same 10 s 32 kHz WAV multipart uploads one at a time on one raw keep-alive socket:

- ``floor``: a bare ASGI app that reads the body and sends a fixed 11 KB JSON answer (the size
  of ``/v1/tag``'s): the transport, uvicorn and the kernel, nothing else;
- ``fastapi``: a minimal FastAPI app doing the same through a route with one query model
  dependency, the streamed body and three pass-through middlewares (the framework's share);
- ``service``: ``python -m service`` with the near-free bundle (``benchmarks/nearfree.py``),
  one process, so the engine's run is a fraction of a millisecond.

The servers take turns (``--rounds``), back to back and with ``--pause-ms`` between requests
(an idle server's wake-ups). Prints JSON: the p50 round trip (ms) per server and mode, per
round and the median over rounds, and the service's margin over each of the others.

    .venv/bin/python benchmarks/lone_floor.py --bundle /tmp/nearfree --requests 1500
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, emit, free_port, machine, start_service, wait_ready
from benchmarks.formats import FORMATS, http_request, payloads
from benchmarks.loadgen import read_response

SERVERS = ("floor", "fastapi", "service")
# an answer the size of /v1/tag's for one file (527 scores and the rest)
ANSWER = orjson.dumps({"results": [{"filename": "clip.wav", "scores": [0.123456] * 527}]})
ANSWER = ANSWER + b" " * max(0, 11_300 - len(ANSWER))


async def _read_all(receive: Receive) -> int:
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    return size


async def floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The bare ASGI app: read the body, send ``ANSWER`` (200 to any request)."""
    if scope["type"] != "http":
        return
    await _read_all(receive)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class _PassThrough:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def forward(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, forward)


class _Query(BaseModel):
    model: str | None = None
    top_k: int = 10


async def _query(request: Request) -> _Query:
    return _Query.model_validate(dict(request.query_params))


fastapi_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_app.post("/v1/tag")
async def _tag(request: Request, query: Annotated[_Query, Depends(_query)]) -> Response:
    async for _ in request.stream():
        pass
    return Response(ANSWER, media_type="application/json")


@fastapi_app.get("/readyz")
async def _ready() -> dict[str, str]:
    return {"status": "ready"}


for _ in range(3):
    fastapi_app.add_middleware(_PassThrough)


@contextmanager
def serving(name: str, bundle: Path) -> Iterator[int]:
    """Server ``name`` on a free port, until the block ends."""
    port = free_port()
    if name == "service":
        proc = start_service(port, {"PANNS_MODELS": str(bundle), "PANNS_WORKERS": "1"}, quiet=True)
    else:
        app = f"benchmarks.lone_floor:{name}_app"
        cmd = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--http", "httptools"]
        cmd += ["--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, 120)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def round_trips(port: int, requests: list[bytes], count: int, pause_s: float) -> float:
    """The p50 round trip (ms) of ``count`` requests, one at a time, after a warm-up."""
    took = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in range(count + 50):
            if pause_s:
                time.sleep(pause_s)
            start = time.perf_counter()
            sock.sendall(requests[n % len(requests)])
            status, _, _ = read_response(sock)
            if status != 200:
                raise SystemExit(f"a request was answered {status}")
            if n >= 50:
                took.append(time.perf_counter() - start)
    return round(1000 * statistics.median(took), 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="the near-free bundle")
    p.add_argument("--requests", type=int, default=1500, help="per server, mode and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause-ms", type=float, default=1.0, help="between requests, 'paused' mode")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    fmt = FORMATS["wav32k"]
    requests = [http_request(fmt, data, 32000) for data in payloads(fmt, 32000, 10.0, 4)]
    modes = {"back_to_back": 0.0, "paused": args.pause_ms / 1000}
    runs: dict[str, dict[str, list[float]]] = {m: {s: [] for s in SERVERS} for m in modes}
    for _ in range(args.rounds):
        for name in SERVERS:
            with serving(name, args.bundle) as port:
                for mode, pause_s in modes.items():
                    runs[mode][name].append(round_trips(port, requests, args.requests, pause_s))
    p50 = {m: {s: statistics.median(v) for s, v in by.items()} for m, by in runs.items()}
    margins = {
        m: {f"service_over_{s}_ms": round(by["service"] - by[s], 3) for s in SERVERS[:2]}
        for m, by in p50.items()
    }
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "unit": "ms, p50 round trip of one 10 s 32 kHz WAV upload (640 KB) at a time",
        "per_round": runs,
        "p50_ms": p50,
        "margins": margins,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
