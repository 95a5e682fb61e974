"""Windows handed from a front to the engine in shared memory (``service.core.handoff``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import TaggingError
from service.core.handoff import ALIGN, Arena, windows_at
from service.core.remote import EngineClient, EngineServer
from service.core.tagger import Tagger
from tests.service.conftest import RATE, noise, run_bundle, settings_for


def test_arena_extents_are_first_fit_and_merge_back() -> None:
    arena = Arena(10 * ALIGN)
    a, b, c = arena.alloc(ALIGN), arena.alloc(3 * ALIGN - 5), arena.alloc(2 * ALIGN)
    assert (a, b, c) == (0, ALIGN, 4 * ALIGN)
    assert arena.alloc(5 * ALIGN) is None  # 4 blocks left
    arena.free(b, 3 * ALIGN - 5)
    assert arena.alloc(2 * ALIGN) == ALIGN  # first fit: the hole b left
    arena.free(ALIGN, 2 * ALIGN)
    arena.free(a, ALIGN)
    arena.free(c, 2 * ALIGN)
    assert arena.free_bytes == arena.size
    assert arena.alloc(arena.size) == 0  # merged back into one extent
    arena.close()


def test_windows_round_trip_and_bad_offsets_are_refused() -> None:
    arena = Arena(1 << 20)
    windows = [np.arange(1000, dtype=np.float32), -np.arange(37, dtype=np.float32)]
    placed = arena.put(windows)
    assert placed is not None
    at, nbytes = placed
    assert nbytes == 4 * 1037
    views = windows_at(arena.floats, at, [1000, 37])
    for got, sent in zip(views, windows, strict=True):
        np.testing.assert_array_equal(got, sent)
    assert arena.put([np.zeros(1 << 20, np.float32)]) is None  # larger than the arena
    with pytest.raises(ValueError, match="outside the arena"):
        windows_at(arena.floats, arena.size - 8, [100])
    with pytest.raises(ValueError, match="outside the arena"):
        windows_at(arena.floats, 2, [10])
    arena.close()


async def _engine(bundle: Path, path: str) -> tuple[Tagger, EngineServer]:
    tagger = Tagger(settings=settings_for(bundle, max_delay_ms=1))
    server = EngineServer(tagger.models, path)
    await server.start()
    await tagger.models.load_all()
    return tagger, server


def test_front_and_engine_share_windows_through_the_arena(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    x = noise(10.0, seed=5)[: 10 * RATE].astype(np.float32)
    path = str(tmp_path / "engine.sock")

    async def go() -> dict[str, object]:
        tagger, server = await _engine(tagger_bundle, path)
        big = EngineClient(path)  # the windows go through shared memory
        small = EngineClient(path, arena_bytes=4096)  # too small: inline through the socket
        await big.connect(30)
        await small.connect(30)
        model = next(iter(tagger.models.models))
        deadline = time.monotonic() + 30
        via_arena, inline = await asyncio.gather(
            big.submit(model, [x, x[: RATE * 5]], deadline),
            small.submit(model, [x], deadline),
        )
        assert big.arena is not None
        freed = big.arena.free_bytes == big.arena.size
        # a cancelled request's extent is freed only once the engine has answered for it
        task = asyncio.create_task(big.submit(model, [x] * 4, deadline))
        await asyncio.sleep(0)
        task.cancel()
        ends = time.monotonic() + 10
        while big.arena.free_bytes != big.arena.size and time.monotonic() < ends:
            await asyncio.sleep(0.01)
        after_cancel = big.arena.free_bytes == big.arena.size
        for client in (big, small):
            await client.close()
        await tagger.close()
        await server.close()
        return {"arena": via_arena, "inline": inline, "freed": freed, "cancel": after_cancel}

    out = asyncio.run(go())
    want = run_bundle(tagger_bundle, x)["clipwise"]
    arena, inline = out["arena"], out["inline"]
    np.testing.assert_allclose(arena[0].outputs["clipwise"], want, atol=1e-5)  # type: ignore[index]
    np.testing.assert_allclose(inline[0].outputs["clipwise"], want, atol=1e-5)  # type: ignore[index]
    assert out["freed"] and out["cancel"]


def test_a_bad_extent_is_an_error_for_that_request_only(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "engine.sock")
    x = noise(10.0, seed=6)[: 10 * RATE].astype(np.float32)

    async def go() -> tuple[str, int]:
        tagger, server = await _engine(tagger_bundle, path)
        client = EngineClient(path, arena_bytes=1 << 20)
        await client.connect(30)
        model = next(iter(tagger.models.models))
        header = {"op": "submit", "model": model, "lengths": [1 << 30], "deadline_in": 10.0}
        reply, _ = await client._call({**header, "at": 0}, b"")
        with pytest.raises(TaggingError):
            from service.core.remote import _raise_remote

            _raise_remote(reply)
        still = await client.submit(model, [x], time.monotonic() + 30)  # the engine serves on
        await client.close()
        await tagger.close()
        await server.close()
        return str(reply.get("args")), len(still)

    message, served = asyncio.run(go())
    assert "outside the arena" in message and served == 1
