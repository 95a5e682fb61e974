"""The front's side of the wire (``service.core.remote``) against an engine that stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.core.batch import WindowResult
from service.core.engine_server import EngineServer, _windows
from service.core.errors import BatcherStopped, DeadlineExceeded
from service.core.handoff import joined, receive_arena, send_arena
from service.core.remote import EngineClient, RemoteQueue
from service.core.tagger import Tagger
from service.core.windows import cut
from service.core.wire import Frames, encode_results, receive
from tests.service.conftest import RATE, noise, settings_for


@contextlib.asynccontextmanager
async def _engine_ready(path: str) -> AsyncIterator[tuple[asyncio.StreamReader, Frames]]:
    """A stand-in engine on a real Unix socket: it takes one front's arena and answers its
    hello as ready; the connection stays open until the block ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    await receive_arena(conn)
    send_arena(conn, None)  # no answer arena: answers come through the socket
    reader, writer = await asyncio.open_unix_connection(sock=conn)
    frames = Frames(writer)
    try:
        header, _ = await receive(reader)
        await frames.send({"id": header["id"], "ok": True, "ready": True, "models": {}})
        yield reader, frames
    finally:
        writer.close()
        listener.close()


async def _stalled_engine(path: str, stalled: asyncio.Event) -> None:
    """An engine that answers the hello, then never reads again."""
    async with _engine_ready(path):
        stalled.set()
        await asyncio.Event().wait()  # holds the connection open, reads nothing


@contextlib.asynccontextmanager
async def _stuck_submit(
    tmp_path: Path,
) -> AsyncIterator[tuple[EngineClient, asyncio.Task[Any], asyncio.Task[None]]]:
    """A front's client connected to a stalled engine, and a submit of 32 MB inline (no arena:
    far more than a socket holds) stuck on its way there."""
    path = str(tmp_path / "engine.sock")
    stalled = asyncio.Event()
    engine = asyncio.create_task(_stalled_engine(path, stalled))
    client = EngineClient(path, arena_bytes=0)
    try:
        await client.connect(timeout_s=10)
        await asyncio.wait_for(stalled.wait(), 10)
        windows = [np.zeros(8 << 20, np.float32)]
        job = asyncio.create_task(RemoteQueue(client, "m").submit(windows, time.monotonic() + 60))
        frames = client._frames
        assert frames is not None
        while not (frames.backlogged() and client._pending):  # stuck sending
            await asyncio.sleep(0.01)
        yield client, job, engine
    finally:
        await client.close()
        engine.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine


def test_a_request_still_sending_sees_the_shutdown_fail_it(tmp_path: Path) -> None:
    """Shutdown fails a front's requests still with the engine (``RemoteQueue.stop``). One whose
    windows are still on their way to an engine that reads slowly must see that at once, not
    wait out its deadline while the server's grace runs out (it then left as a bare 500)."""

    async def main() -> None:
        async with _stuck_submit(tmp_path) as (client, job, _):
            started = time.monotonic()
            await RemoteQueue(client, "m").stop(timeout=0.05)
            with pytest.raises(BatcherStopped, match="shutting down"):
                await asyncio.wait_for(job, 10)
            assert time.monotonic() - started < 5  # not the deadline (60 s) or the grace

    asyncio.run(main())


def test_a_request_cancelled_while_sending_ends_at_once(tmp_path: Path) -> None:
    """A client gone while its windows are still on their way: the request ends now; its
    cancel frame is posted behind them, not waited for."""

    async def main() -> None:
        async with _stuck_submit(tmp_path) as (client, job, _):
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(job, 5)
            assert not client._pending

    asyncio.run(main())


def test_an_engine_gone_while_a_request_is_sending_is_a_503_not_a_500(tmp_path: Path) -> None:
    """The engine dies while a request's windows are on their way: the request fails with
    ``BatcherStopped`` (the service's 503), not with the socket's ``ConnectionError`` (a 500)."""

    async def main() -> None:
        async with _stuck_submit(tmp_path) as (client, job, engine):
            engine.cancel()  # closes the engine's end of the connection
            with pytest.raises(BatcherStopped, match="went away"):
                await asyncio.wait_for(job, 10)
            assert not client._pending

    asyncio.run(main())


def test_an_engine_that_never_answers_fails_the_request_past_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine enforces deadlines; if it stops answering, the front gives up on its own
    shortly after the deadline (``DeadlineExceeded``: a 504) and tells the engine to drop
    the request's windows."""
    monkeypatch.setattr("service.core.remote._ENGINE_GRACE_S", 0.05)
    path = str(tmp_path / "engine.sock")
    frames_seen: list[dict[str, Any]] = []

    async def silent_engine() -> None:
        async with _engine_ready(path) as (reader, _):
            while True:
                header, _ = await receive(reader)
                frames_seen.append(header)

    async def main() -> float:
        engine = asyncio.create_task(silent_engine())
        client = EngineClient(path)
        await client.connect(timeout_s=10)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="did not answer"):
            async with asyncio.timeout(10):  # a failure, not a hang, if nothing gives up
                await client.submit("m", [np.zeros(8, np.float32)], start + 0.2)
        took = time.monotonic() - start
        for _ in range(500):
            if any(f.get("op") == "cancel" for f in frames_seen):
                break
            await asyncio.sleep(0.01)
        assert not client._pending
        await client.close()
        engine.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine
        return took

    took = asyncio.run(main())
    assert 0.25 <= took < 5
    submit, cancel = (f for f in frames_seen if f.get("op") in ("submit", "cancel"))
    assert submit["op"] == "submit" and cancel == {"op": "cancel", "id": submit["id"], "bytes": 0}


def _overlapping(seconds: float = 3.05) -> tuple[np.ndarray, list[np.ndarray]]:
    """A heap waveform cut into 1 s windows every 0.1 s: 22 windows, views of it, and a
    zero-padded last one (its own array)."""
    wave = noise(seconds, seed=21)
    return wave, [w.samples for w in cut(wave, RATE, RATE // 10, True, RATE)]


async def _recording_engine(path: str, got: asyncio.Future[tuple[dict[str, Any], bytes]]) -> None:
    """An engine that keeps the first submit's frame as it arrived and answers it with
    empty outputs."""
    async with _engine_ready(path) as (reader, frames):
        header, payload = await receive(reader)
        got.set_result((header, payload))
        rows = [WindowResult({}, 0.0, 0.0, 1, 1) for _ in header["lengths"]]
        answer, parts = encode_results(header["id"], rows)
        await frames.send(answer, joined(parts))
        await asyncio.Event().wait()


def test_overlapping_windows_go_inline_as_the_span_they_cover(tmp_path: Path) -> None:
    """With no arena, windows a hop apart (here 1 s every 0.1 s) travel as the span of the
    waveform they cover, each window at its offset in it: the bytes on the socket are the
    span's (and the padded window's), not 10 copies of each sample; the engine's windows are
    the front's, bit for bit."""
    path = str(tmp_path / "engine.sock")
    wave, windows = _overlapping()

    async def main() -> tuple[dict[str, Any], bytes]:
        got: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.Future()
        engine = asyncio.create_task(_recording_engine(path, got))
        client = EngineClient(path, arena_bytes=0)
        try:
            await client.connect(timeout_s=10)
            results = await client.submit("m", windows, time.monotonic() + 30)
            assert len(results) == len(windows)
            return await got
        finally:
            await client.close()
            engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine

    header, payload = asyncio.run(main())
    views = sum(w.base is wave for w in windows)
    assert views == 21 and windows[-1].base is None
    span = 4 * (20 * RATE // 10 + RATE)  # the views cover 0..3 s
    assert header["bytes"] == len(payload) == span + windows[-1].nbytes  # 512 KB
    assert sum(w.nbytes for w in windows) == 2_816_000  # what went before: 5.5 times more
    assert header["inline_ats"] == [4 * RATE // 10 * i for i in range(21)] + [span]
    engine_side = _windows(header, payload, None)
    assert not isinstance(engine_side, Exception)
    assert [w.tobytes() for w in engine_side] == [w.tobytes() for w in windows]


def test_inline_spans_score_as_the_arena_and_the_batcher_do(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    """A real engine: overlapping windows sent inline as their span give the same scores,
    bit for bit, as through the arena, as windows sent end to end (separate arrays, the old
    inline layout), and as the engine's own batcher in process."""
    path = str(tmp_path / "engine.sock")
    _, windows = _overlapping()

    async def main() -> list[np.ndarray]:
        tagger = Tagger(settings=settings_for(tagger_bundle, max_delay_ms=1))
        server = EngineServer(tagger.models, path)
        await server.start()
        await tagger.models.load_all()
        model = next(iter(tagger.models.models))
        by_socket, by_arena = EngineClient(path, arena_bytes=0), EngineClient(path)
        await by_socket.connect(30)
        await by_arena.connect(30)
        deadline = time.monotonic() + 60
        outs = [
            await by_socket.submit(model, windows, deadline),
            await by_arena.submit(model, windows, deadline),
            await by_socket.submit(model, [w.copy() for w in windows], deadline),
        ]
        batcher = tagger.models.get(model).batcher
        outs.append(await batcher.submit(windows, time.monotonic() + 60))
        await by_socket.close()
        await by_arena.close()
        await tagger.close()
        await server.close()
        return [np.stack([r.outputs["clipwise"] for r in out]) for out in outs]

    inline, arena, end_to_end, in_process = asyncio.run(main())
    assert inline.shape[0] == len(windows)
    for other in (arena, end_to_end, in_process):
        np.testing.assert_array_equal(inline, other)


def test_frame_scores_come_back_through_the_answer_arena(
    sed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real engine and a decision-level model: each answer's frame scores come back in the
    engine's answer arena (smaller here than six answers), equal bit for bit to the engine's
    own batcher in process; every answer is freed once copied out, so twelve requests in a
    row all find room, and the results outlive their extents."""
    monkeypatch.setattr("service.core.engine_server.ANSWER_ARENA_BYTES", 6 * 101 * 527 * 4)
    path = str(tmp_path / "engine.sock")
    clips = [noise(1.0, seed=30 + i) for i in range(12)]

    async def main() -> tuple[list[np.ndarray], list[np.ndarray], int]:
        tagger = Tagger(settings=settings_for(sed_bundle, max_delay_ms=1))
        server = EngineServer(tagger.models, path)
        await server.start()
        await tagger.models.load_all()
        model = next(iter(tagger.models.models))
        client = EngineClient(path)
        await client.connect(30)
        lent, read = 0, client._lent_answer

        def counted(header: dict[str, Any]) -> Any:
            nonlocal lent
            lent += 1
            return read(header)

        client._lent_answer = counted  # type: ignore[method-assign]
        deadline = time.monotonic() + 120
        remote = [await client.submit(model, [c], deadline, ["framewise"]) for c in clips]
        batcher = tagger.models.get(model).batcher
        local = [await batcher.submit([c], deadline) for c in clips]
        await client.close()
        await tagger.close()
        await server.close()
        frames = [[r[0].outputs["framewise"] for r in out] for out in (remote, local)]
        return frames[0], frames[1], lent

    remote, local, lent = asyncio.run(main())
    assert lent == len(clips)
    for a, b in zip(remote, local, strict=True):
        assert a.nbytes > 64 << 10
        np.testing.assert_array_equal(a, b)


def test_a_front_without_an_answer_arena_gets_its_answers_through_the_socket(
    tagger_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for an answer arena (here: one larger than any address space) is no reason
    to refuse a front: the engine passes none, and the answers use the socket."""
    monkeypatch.setattr("service.core.engine_server.ANSWER_ARENA_BYTES", 1 << 62)
    path = str(tmp_path / "engine.sock")

    async def main() -> tuple[np.ndarray | None, list[WindowResult]]:
        tagger = Tagger(settings=settings_for(tagger_bundle, max_delay_ms=1))
        server = EngineServer(tagger.models, path)
        await server.start()
        await tagger.models.load_all()
        client = EngineClient(path)
        await client.connect(30)
        model = next(iter(tagger.models.models))
        out = await client.submit(model, [noise(1.0, seed=5)], time.monotonic() + 60)
        answers = client._answers
        await client.close()
        await tagger.close()
        await server.close()
        return answers, out

    answers, out = asyncio.run(main())
    assert answers is None and out[0].outputs["clipwise"].shape == (527,)
