"""The engine's side of the wire (``service.core.engine_server``): answers on a real socket."""

from __future__ import annotations

import asyncio
import socket
from functools import partial
from typing import Any

import numpy as np

from service.core.batch import WindowResult
from service.core.engine_server import ANSWER_ARENA_MIN, Answers, _answer
from service.core.handoff import Arena, windows_at
from service.core.wire import Frames, decode_results, receive


async def _answered(
    result: list[WindowResult], kinds: list[str] | None = None, arena: Arena | None = None
) -> tuple[dict[str, Any], bytes, dict[int, Any]]:
    """Settle a submit's future (asking for ``kinds``) with ``result``; what the front reads
    back, and what is still pending on the engine's side. ``arena``: the answer arena."""
    engine_end, front_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _, writer = await asyncio.open_unix_connection(sock=engine_end)
    reader, front_writer = await asyncio.open_unix_connection(sock=front_end)
    frames = Frames(writer)
    future: asyncio.Future[list[WindowResult]] = asyncio.get_running_loop().create_future()
    pending = {7: future}
    future.add_done_callback(partial(_answer, 7, Answers(frames, arena), pending, kinds))
    future.set_result(result)
    header, payload = await asyncio.wait_for(receive(reader), 5)
    frames.close()
    front_writer.close()
    return header, payload, pending


def test_a_result_goes_back_to_the_front() -> None:
    row = np.arange(4, dtype=np.float32)
    header, payload, pending = asyncio.run(
        _answered([WindowResult({"clipwise": row}, 0.001, 0.002, 1, 3)])
    )
    assert header["id"] == 7 and header["ok"] and pending == {}
    (back,) = decode_results(header, payload)
    np.testing.assert_array_equal(back.outputs["clipwise"], row)
    assert back.batch_id == 3


def test_an_answer_that_cannot_be_encoded_goes_back_as_an_error() -> None:
    """A failure while answering (MemoryError on a huge answer, say) reaches the front as an
    error for that request: the front does not wait for its deadline, and lets go of the
    windows it holds for it."""
    broken = WindowResult({"clipwise": object()}, 0.0, 0.0, 1, 1)  # type: ignore[dict-item]
    header, _, pending = asyncio.run(_answered([broken]))
    assert header["id"] == 7 and header["ok"] is False and pending == {}
    assert header["error"] == "AttributeError"


def test_only_the_kinds_asked_for_cross_the_socket() -> None:
    """/v1/tag reads clipwise only: a decision-level model's frame scores (1001 x 527 per
    window) stay in the engine."""
    rows = [
        WindowResult(
            {
                "clipwise": np.full(527, i, np.float32),
                "embedding": np.zeros(2048, np.float32),
                "framewise": np.zeros((1001, 527), np.float32),
            },
            0.0,
            0.0,
            2,
            1,
        )
        for i in range(2)
    ]
    header, payload, _ = asyncio.run(_answered(rows, ["clipwise"]))
    assert header["kinds"] == ["clipwise"] and len(payload) == 2 * 527 * 4
    back = decode_results(header, payload)
    assert [set(r.outputs) for r in back] == [{"clipwise"}] * 2
    np.testing.assert_array_equal(back[1].outputs["clipwise"], rows[1].outputs["clipwise"])
    header, payload, _ = asyncio.run(_answered(rows))  # no kinds: every output
    assert header["kinds"] == ["clipwise", "embedding", "framewise"]
    assert len(payload) == 2 * 4 * (527 + 2048 + 1001 * 527)


def _frames_of(count: int) -> list[WindowResult]:
    return [
        WindowResult({"framewise": np.full((101, 527), i, np.float32)}, 0.0, 0.0, count, 1)
        for i in range(count)
    ]


def test_a_large_answer_is_lent_in_the_answer_arena_until_the_front_frees_it() -> None:
    """Frame scores (213 kB a window here) go through the engine's answer arena, not the
    socket: the header says where; the extent is the front's to read until it frees it."""
    arena = Arena(4 << 20)
    rows = _frames_of(2)
    header, payload, _ = asyncio.run(_answered(rows, arena=arena))
    assert payload == b"" and header["floats"] == 2 * 101 * 527
    (lent,) = windows_at(arena.floats, [header["at"]], [header["floats"]])
    back = decode_results(header, lent.copy())
    np.testing.assert_array_equal(back[1].outputs["framewise"], rows[1].outputs["framewise"])


def test_answers_free_returns_the_extent_and_ignores_bad_offsets() -> None:
    async def main() -> None:
        engine_end, front_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _, writer = await asyncio.open_unix_connection(sock=engine_end)
        arena = Arena(4 << 20)
        answers = Answers(Frames(writer), arena)
        answers.post({"id": 1, "ok": True}, [np.zeros(ANSWER_ARENA_MIN, np.float32)])
        (at,) = answers.lent
        for bad in ({"at": "x"}, {"at": None}, {}, {"at": at + 64}):
            answers.free(bad)
        assert list(answers.lent) == [at]
        answers.free({"at": at})
        assert answers.lent == {} and arena.free_bytes == arena.size
        answers.post({"id": 2, "ok": True}, [np.zeros(16, np.float32)])  # small: socket
        assert answers.lent == {}
        writer.close()
        front_end.close()

    asyncio.run(main())


def test_an_answer_that_finds_the_arena_full_goes_through_the_socket() -> None:
    rows = _frames_of(3)
    header, payload, _ = asyncio.run(_answered(rows, arena=Arena(256 << 10)))
    assert "at" not in header and len(payload) == 3 * 101 * 527 * 4
    np.testing.assert_array_equal(
        decode_results(header, payload)[2].outputs["framewise"], rows[2].outputs["framewise"]
    )
