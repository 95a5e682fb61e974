"""``service.direct``: the upload routes served past FastAPI's router answer exactly what
FastAPI's own routing of them answers, good requests and bad alike.

Two real servers over the same bundles: the app as ``create_app`` makes it, and the same app
without the ``DirectUploads`` middleware (FastAPI routes every request). Each request of the
table goes to both; statuses, error bodies, the headers that matter and the numbers must match.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from service.direct import DirectRoute, DirectUploads, declared
from service.errors import ApiError, install_error_handlers
from tests.conftest import free_port
from tests.service.conftest import RATE, LiveServer, encode, files, noise, settings_for

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIP = encode(noise(3.0, 7), RATE, subtype="PCM_16")
PCM = (noise(2.0, 8) * 32767).astype("<i2").tobytes()
WAV = {"Content-Type": "audio/wav"}
OCTETS = {"Content-Type": "application/octet-stream"}
TRUNCATED = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + CLIP
Sent = tuple[str, str, dict[str, Any], Any, dict[str, str]]
MULTIPART_B = {"Content-Type": "multipart/form-data; boundary=b"}
ONE = files(("a.wav", CLIP))
# (status, (method, path, query, body, headers)): what both servers are sent (with the right
# key unless the headers name another) and the status both must answer
REQUESTS: list[Any] = [
    pytest.param(200, ("POST", "/v1/tag", {"top_k": 3}, ONE, {}), id="tag"),
    pytest.param(
        200, ("POST", "/v1/tag", {"scores": "false", "window_s": 1}, ONE, {}), id="windows"
    ),
    pytest.param(
        200,
        ("POST", "/v1/tag", {}, files(("a.wav", CLIP), ("b.wav", CLIP[:44])), {}),
        id="one-good-one-empty",
    ),
    pytest.param(200, ("POST", "/v1/tag", {"filename": "r.wav"}, CLIP, WAV), id="raw-wav"),
    pytest.param(
        200, ("POST", "/v1/tag", {"sample_rate": RATE, "dtype": "int16"}, PCM, OCTETS), id="pcm"
    ),
    pytest.param(422, ("POST", "/v1/tag", {}, PCM, OCTETS), id="pcm-no-rate"),
    pytest.param(
        422, ("POST", "/v1/tag", {"top_k": -1, "window_s": "abc"}, ONE, {}), id="bad-query"
    ),
    pytest.param(404, ("POST", "/v1/tag", {"model": "nope"}, ONE, {}), id="unknown-model"),
    pytest.param(
        401, ("POST", "/v1/tag", {}, ONE, {"Authorization": "Bearer wrong"}), id="wrong-key"
    ),
    pytest.param(401, ("POST", "/v1/tag", {}, ONE, {"Authorization": ""}), id="no-key"),
    pytest.param(400, ("POST", "/v1/tag", {}, TRUNCATED, MULTIPART_B), id="truncated"),
    pytest.param(
        415, ("POST", "/v1/tag", {}, b"hi", {"Content-Type": "text/plain"}), id="text-plain"
    ),
    pytest.param(
        415, ("POST", "/v1/tag", {}, files(("a.bin", b"\x01" * 4000)), {}), id="not-audio"
    ),
    pytest.param(413, ("POST", "/v1/tag", {}, b"\0" * (3 << 20), WAV), id="too-large"),
    pytest.param(200, ("POST", "/v1/embed", {}, ONE, {}), id="embed"),
    pytest.param(422, ("POST", "/v1/detect", {}, ONE, {}), id="detect-clip-model"),
    pytest.param(
        200,
        ("POST", "/v1/detect", {"model": "cnn14_decisionlevelmax"}, ONE, {}),
        id="detect",
    ),
    pytest.param(405, ("GET", "/v1/tag", {}, None, {}), id="get"),  # FastAPI's either way
    pytest.param(None, ("POST", "/v1/tag/", {}, ONE, {}), id="trailing-slash"),
]
HEADERS = ("content-type", "www-authenticate", "retry-after", "allow", "connection")


def _routed_by_fastapi(server: LiveServer) -> LiveServer:
    """``server`` without the short way in (before its first request builds the stack)."""
    kept = [m for m in server.app.user_middleware if m.cls is not DirectUploads]
    assert len(kept) == len(server.app.user_middleware) - 1
    server.app.user_middleware = kept
    return server


@pytest.fixture(scope="module")
def servers(tagger_bundle: Path, sed_bundle: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    settings = settings_for(tagger_bundle, sed_bundle, api_keys=KEY, max_upload_mb=2)
    direct = LiveServer(settings).start()
    routed = _routed_by_fastapi(LiveServer(settings)).start()
    yield direct, routed
    direct.stop()
    routed.stop()


def _send(server: LiveServer, request: Sent) -> httpx.Response:
    method, path, query, body, headers = request
    kwargs: dict[str, Any] = {"params": query, "headers": {**AUTH, **headers}}
    if isinstance(body, list):
        kwargs["files"] = body
    elif body is not None:
        kwargs["content"] = body
    with server.client() as client:
        return client.request(method, path, **kwargs)


def _without_timings(value: Any) -> Any:
    """The body less each file's ``metrics`` (its own timings, never the same twice)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "metrics"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _same_numbers(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same_numbers(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_numbers(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-7)
    else:
        assert a == b


@pytest.mark.parametrize(("status", "request_"), REQUESTS)
def test_the_direct_door_answers_as_fastapi_routing_does(
    servers: tuple[LiveServer, LiveServer], status: int | None, request_: Sent
) -> None:
    direct, routed = (_send(server, request_) for server in servers)
    assert direct.status_code == routed.status_code, direct.text
    assert status is None or direct.status_code == status, direct.text
    for name in HEADERS:
        assert direct.headers.get(name) == routed.headers.get(name), name
    assert direct.headers.get("x-request-id")
    if "json" in (direct.headers.get("content-type") or ""):
        _same_numbers(_without_timings(direct.json()), _without_timings(routed.json()))
    else:
        assert direct.content == routed.content


def _counted(server: LiveServer, endpoint: str) -> float:
    from tests.service.conftest import metric_total, parse_metrics

    with server.client() as client:
        text = client.get("/metrics").text
    return metric_total(parse_metrics(text), "panns_requests_total", endpoint=endpoint)


def test_direct_requests_are_counted_and_logged_under_their_route(
    servers: tuple[LiveServer, LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    direct, _ = servers
    before = _counted(direct, "/v1/tag")
    with caplog.at_level(logging.INFO, logger="service.access"):
        response = _send(direct, REQUESTS[0].values[1])
    assert response.status_code == 200
    assert _counted(direct, "/v1/tag") == before + 1
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    assert any(f.get("endpoint") == "/v1/tag" and f.get("status") == 200 for f in fields)


# --- the middleware on its own, in a small app served by a real server ---------------------


async def _echo(request: Request, query: dict[str, str]) -> Response:
    if "boom" in query:
        raise RuntimeError("boom")
    if "refuse" in query:
        raise ApiError(409, "refused", "refused on purpose")
    return Response(f"direct {request.method} {sorted(query.items())}")


async def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


async def _no_auth(_: Request) -> None:
    return None


ECHO = DirectRoute("/echo", _query, _echo)


def _small_app() -> FastAPI:
    app = FastAPI()
    app.post("/echo")(_echo_route)
    app.get("/echo")(_get_echo)
    install_error_handlers(app)
    # named after FastAPI's own route, whose endpoint differs, to tell the two ways apart
    fastapis = next(r for r in app.router.routes if getattr(r, "endpoint", None) is _echo_route)
    routes = {ECHO.path: (ECHO, fastapis)}
    app.add_middleware(DirectUploads, routes=routes, auth=_no_auth, handlers=app.exception_handlers)
    return app


async def _echo_route(request: Request) -> Response:  # what FastAPI would run
    return Response("routed")


async def _get_echo() -> Response:
    return Response("routed GET")


def test_declared_finds_only_the_route_serving_the_same_endpoint() -> None:
    app = FastAPI()
    app.post("/echo")(_echo_route)
    with pytest.raises(LookupError, match="no POST route /echo"):
        declared(ECHO, app.router.routes)
    app.post("/echo")(_echo)
    assert declared(ECHO, app.router.routes).endpoint is _echo


@contextlib.contextmanager
def _serving(app: FastAPI, root_path: str = "") -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app, port=port, log_level="critical", lifespan="off", root_path=root_path
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    with _serving(_small_app()) as url:
        yield url


def test_behind_a_proxys_root_path_the_route_path_is_matched() -> None:
    # the proxy strips /api; uvicorn puts it back in front of the path (and in root_path)
    with _serving(_small_app(), root_path="/api") as url, httpx.Client(base_url=url) as client:
        assert client.post("/echo").text == "direct POST []"
        assert client.get("/echo").text == "routed GET"


def test_only_a_post_to_a_listed_path_takes_the_direct_way(small_server: str) -> None:
    with httpx.Client(base_url=small_server) as client:
        assert client.post("/echo", params={"a": "1"}).text == "direct POST [('a', '1')]"
        assert client.get("/echo").text == "routed GET"
        assert client.post("/echo/").status_code in (307, 404)  # FastAPI's, not ours
        assert client.post("/other").status_code == 404


def test_errors_get_the_services_handlers_and_unknown_ones_a_plain_500(
    small_server: str,
) -> None:
    with httpx.Client(base_url=small_server) as client:
        refused = client.post("/echo", params={"refuse": "1"})
        assert refused.status_code == 409
        assert refused.json() == {"error": {"code": "refused", "message": "refused on purpose"}}
        boom = client.post("/echo", params={"boom": "1"})
        assert boom.status_code == 500
        assert boom.json() == {
            "error": {"code": "internal_error", "message": "internal server error"}
        }
