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

from service.core.errors import BatcherStopped
from service.core.handoff import receive_arena
from service.core.remote import EngineClient, RemoteQueue
from service.core.wire import Frames, receive


async def _stalled_engine(path: str, stalled: asyncio.Event) -> None:
    """An engine on a real Unix socket that answers the hello, then never reads again."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    await receive_arena(conn)
    reader, writer = await asyncio.open_unix_connection(sock=conn)
    header, _ = await receive(reader)
    await Frames(writer).send({"id": header["id"], "ok": True, "ready": True, "models": {}})
    stalled.set()
    try:
        await asyncio.Event().wait()  # holds the connection open, reads nothing
    finally:
        writer.close()
        listener.close()


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
