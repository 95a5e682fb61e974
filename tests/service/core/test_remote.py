"""The front's side of the wire (``service.core.remote``) against an engine that stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

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


def test_a_request_still_sending_sees_the_shutdown_fail_it(tmp_path: Path) -> None:
    """Shutdown fails a front's requests still with the engine (``RemoteQueue.stop``). One whose
    windows (inline: no arena) are still on their way to an engine that reads slowly must see
    that at once, not wait out its deadline while the server's grace runs out."""

    async def main() -> None:
        path = str(tmp_path / "engine.sock")
        stalled = asyncio.Event()
        engine = asyncio.create_task(_stalled_engine(path, stalled))
        client = EngineClient(path, arena_bytes=0)
        try:
            await client.connect(timeout_s=10)
            await asyncio.wait_for(stalled.wait(), 10)
            windows = [np.zeros(8 << 20, np.float32)]  # 32 MB: far more than a socket holds
            job = asyncio.create_task(
                RemoteQueue(client, "m").submit(windows, time.monotonic() + 60)
            )
            frames = client._frames
            assert frames is not None
            while not (frames.backlogged() and client._pending):  # stuck sending
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await RemoteQueue(client, "m").stop(timeout=0.05)
            with pytest.raises(BatcherStopped, match="shutting down"):
                await asyncio.wait_for(job, 10)
            assert time.monotonic() - started < 5  # not the deadline (60 s) or the grace
        finally:
            await client.close()
            engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine

    asyncio.run(main())
