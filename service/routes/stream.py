"""WS /v1/stream: live tagging of raw PCM frames (the door; the logic is core/stream.py).

Protocol: the client's first message is JSON ``{"model", "sample_rate", "channels",
"sample_format": "int16"|"float32", "window_s", "hop_s", "top_k", "threshold", "api_key"}``;
the service answers ``{"type": "ready", ...}``. Then binary frames of interleaved PCM; every
hop the service sends ``{"type": "result", "start_s", "end_s", "top", "skipped", ...}``.
``{"type": "end"}`` (or closing) flushes the last padded window; the service sends
``{"type": "end", "windows", "skipped"}`` and closes with 1000.

Close codes: 1008 bad or missing API key, 1013 too many streams or models not ready,
1009 frame larger than ``max_frame_kb``, 1003 a binary opening message, 1007 a malformed
opening message or bad PCM, 1001 idle for ``stream_idle_s``, 1011 an internal error or a
tail (the results after ``end``) not delivered within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.core.audiocheck import AudioError
from service.core.errors import InvalidParameters, NotReady, UnknownModel
from service.core.stream import LiveStream, StreamConfig, StreamResult
from service.core.tagger import Tagger
from service.deps import key_matches, sent_key
from service.metrics import Metrics
from service.present import top_json
from service.settings import Settings

log = logging.getLogger("service.stream")
router = APIRouter()


class Close(Exception):
    """End the stream with a WebSocket close code and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def result_json(r: StreamResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "result",
        "start_s": r.start_s,
        "end_s": r.end_s,
        "top": top_json(r.top),
        "skipped": r.skipped,
    }
    if r.error is not None:
        out["error"] = r.error
    if r.tracks is not None:
        out["tracks"] = [{"label": t.label, "index": t.index, "scores": t.scores} for t in r.tracks]
        out["events"] = [
            {
                "label": e.label,
                "index": e.index,
                "start_s": e.start_s,
                "end_s": e.end_s,
                "peak": e.peak,
            }
            for e in r.events or []
        ]
    return out


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY).decode())


async def _receive(ws: WebSocket, settings: Settings) -> MutableMapping[str, Any]:
    try:
        async with asyncio.timeout(settings.stream_idle_s):
            message = await ws.receive()
    except TimeoutError:
        raise Close(
            1001, f"no message for {settings.stream_idle_s:g} s (PANNS_STREAM_IDLE_S)"
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
    if size > settings.max_frame_kb * 1024:
        raise Close(
            1009, f"message of {size} bytes: the limit is {settings.max_frame_kb} KiB"
        ) from None
    return message


async def _open(ws: WebSocket, tagger: Tagger, settings: Settings) -> LiveStream:
    """Read and check the opening message; the stream it asks for."""
    first = await _receive(ws, settings)
    if first.get("text") is None:
        raise Close(1003, "the first message must be JSON text with sample_rate etc.")
    try:
        message = orjson.loads(first["text"])
    except orjson.JSONDecodeError:
        raise Close(1007, "the first message is not valid JSON") from None
    if not isinstance(message, dict):
        raise Close(1007, "the first message must be a JSON object")
    keys = settings.api_key_list
    key = sent_key(ws.headers) or str(message.pop("api_key", "") or "")
    message.pop("api_key", None)
    if keys and not key_matches(key, keys):
        raise Close(1008, "wrong API key" if key else "missing API key")
    try:
        config = StreamConfig.parse(message)
        runtime = tagger.model(config.model)
        return LiveStream(runtime, config, settings.min_hop_s, settings.timeout_s)
    except NotReady as exc:
        raise Close(1013, exc.message) from None
    except (InvalidParameters, UnknownModel) as exc:
        raise Close(1007, exc.message) from None


async def _pump_results(ws: WebSocket, stream: LiveStream, metrics: Metrics) -> None:
    async for result in stream.results():
        if result.skipped:
            metrics.stream_skipped.labels(stream.runtime.name).inc(result.skipped)
        await _send(ws, result_json(result))


async def _serve(ws: WebSocket, stream: LiveStream, settings: Settings, metrics: Metrics) -> None:
    card = stream.card
    await _send(
        ws,
        {
            "type": "ready",
            "model": card.name,
            "model_sample_rate": card.sample_rate,
            "window_s": stream.cutter.window / card.sample_rate,
            "hop_s": stream.cutter.hop / card.sample_rate,
        },
    )
    sender = asyncio.ensure_future(_pump_results(ws, stream, metrics))
    seconds = metrics.stream_seconds.labels(card.name)
    try:
        while True:
            receive = asyncio.ensure_future(_receive(ws, settings))
            await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                sender.result()  # the sender failed: raise its error
            message = receive.result()
            if message.get("bytes") is not None:
                try:
                    seconds.inc(stream.feed(message["bytes"]))
                except AudioError as exc:
                    raise Close(1007, exc.message) from None
            elif _is_end(message.get("text")):
                break
        await _tail(ws, stream, sender, settings)
    except BaseException:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        raise
    await ws.close(1000, "end of stream")


async def _tail(
    ws: WebSocket, stream: LiveStream, sender: asyncio.Future[None], settings: Settings
) -> None:
    """After ``{"type": "end"}``: the last windows, their results and the end message,
    within ``timeout_s``. ``finish`` waits for room that only the sender makes (by delivering
    results), so a sender that ends first (the client left, a send or the engine failed)
    ends the stream with its error instead of leaving ``finish`` waiting forever."""
    finish = asyncio.ensure_future(stream.finish())
    try:
        async with asyncio.timeout(settings.timeout_s) as limit:
            await asyncio.wait({finish, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not finish.done():
                sender.result()  # the sender failed: raise its error
                raise RuntimeError("the results ended before the stream did")
            finish.result()
            await sender
            end = {"type": "end", "windows": stream.windows_total, "skipped": stream.skipped_total}
            await _send(ws, end)
    except TimeoutError:
        if not limit.expired():
            raise
        raise Close(
            1011, f"the end of the stream took over {settings.timeout_s:g} s (PANNS_TIMEOUT_S)"
        ) from None
    finally:
        finish.cancel()
        with contextlib.suppress(BaseException):
            await finish


def _is_end(text: str | None) -> bool:
    try:
        message = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        raise Close(1007, 'text messages after the first must be {"type": "end"}') from None
    if isinstance(message, dict) and message.get("type") == "end":
        return True
    raise Close(1007, 'text messages after the first must be {"type": "end"}')


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    app = ws.app
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    tagger: Tagger = app.state.tagger
    await ws.accept()
    if app.state.open_streams >= settings.max_streams:
        await ws.close(1013, f"{settings.max_streams} streams are open: try again later")
        return
    app.state.open_streams += 1
    metrics.open_streams.inc()
    live: LiveStream | None = None
    try:
        live = await _open(ws, tagger, settings)
        await _serve(ws, live, settings, metrics)
    except Close as exc:
        with contextlib.suppress(Exception):
            await ws.close(exc.code, exc.reason[:120])
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("stream failed")
        with contextlib.suppress(Exception):
            await ws.close(1011, "internal error")
    finally:
        app.state.open_streams -= 1
        metrics.open_streams.dec()
        if live is not None:
            await live.close()
