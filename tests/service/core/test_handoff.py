"""Windows handed from a front to the engine in shared memory (``service.core.handoff``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.core.audio import decode
from service.core.engine_server import EngineServer
from service.core.errors import TaggingError
from service.core.handoff import ALIGN, Arena, inline, windows_at
from service.core.remote import EngineClient
from service.core.tagger import Tagger
from service.core.windows import cut
from service.core.wire import raise_remote
from tests.service.conftest import RATE, encode, noise, run_bundle, settings_for


def test_arena_extents_are_first_fit_and_merge_back() -> None:
    arena = Arena(10 * ALIGN)
    f = ALIGN // 4  # float32 per aligned block
    a, b, c = arena.array(f), arena.array(3 * f - 1), arena.array(2 * f)
    assert a is not None and b is not None and c is not None
    assert [arena.offset_of(x) for x in (a, b, c)] == [0, ALIGN, 4 * ALIGN]
    assert arena.array(5 * f) is None  # 4 blocks left
    del b  # its extent comes back once its last view is gone
    d = arena.array(2 * f)
    assert d is not None and arena.offset_of(d) == ALIGN  # first fit: the hole b left
    del a, c, d
    assert arena.free_bytes == arena.size
    whole = arena.array(arena.size // 4)
    assert whole is not None and arena.offset_of(whole) == 0  # merged back into one extent
    del whole
    arena.close()


def test_windows_round_trip_and_bad_offsets_are_refused() -> None:
    arena = Arena(1 << 20)
    windows = [np.arange(1000, dtype=np.float32), -np.arange(37, dtype=np.float32)]
    placed = arena.place(windows)
    assert placed is not None
    offsets = [arena.offset_of(w) for w in placed]
    assert offsets == [0, 4000]  # one extent, end to end
    views = windows_at(arena.floats, offsets, [1000, 37])  # type: ignore[arg-type]
    for got, sent in zip(views, windows, strict=True):
        np.testing.assert_array_equal(got, sent)
    assert arena.place([np.zeros(1 << 20, np.float32)]) is None  # larger than the arena
    with pytest.raises(ValueError, match="outside the arena"):
        windows_at(arena.floats, [arena.size - 8], [100])
    with pytest.raises(ValueError, match="outside the arena"):
        windows_at(arena.floats, [2], [10])
    with pytest.raises(ValueError, match="2 offsets for 1 windows"):
        windows_at(arena.floats, [0, 8], [10])
    arena.close()


def test_an_extent_comes_back_when_its_last_view_is_gone() -> None:
    arena = Arena(1 << 20)
    wave = arena.array(1000)
    assert wave is not None and arena.free_bytes == arena.size - 4032
    window = wave[100:300]  # what the decoded waveform's windows are
    del wave
    assert arena.free_bytes == arena.size - 4032  # the window still holds it
    assert arena.place([window]) == [window]  # already there: no copy, no new extent
    assert arena.offset_of(window) == 400
    assert arena.offset_of(np.zeros(200, np.float32)) is None
    padded = np.ones(50, np.float32)  # a window not cut from the waveform: copied alone
    mixed = arena.place([window, padded])
    assert mixed is not None and mixed[0] is window and arena.offset_of(mixed[1]) == 4032
    np.testing.assert_array_equal(mixed[1], padded)
    del mixed
    del window
    assert arena.free_bytes == arena.size
    arena.close()


def _same_bits(got: list[np.ndarray], sent: list[np.ndarray]) -> bool:
    return [g.tobytes() for g in got] == [np.asarray(w, np.float32).tobytes() for w in sent]


def test_overlapping_windows_of_a_heap_waveform_take_the_span_they_cover() -> None:
    """A waveform decoded on the heap (too long for the arena, or resampled), cut with a hop
    shorter than the window: its windows go into one extent as the span they cover, each
    sample once, not once per window over it (here 10 times)."""
    arena = Arena(8 << 20)
    wave = noise(100_000 / RATE, seed=11)  # on the heap
    windows = [w.samples for w in cut(wave, 10_000, 1_000, True, 1_000)]
    assert len(windows) == 91 and all(w.base is wave for w in windows)
    before = arena.free_bytes
    placed = arena.place(windows)
    assert placed is not None
    assert before - arena.free_bytes == wave.nbytes  # 400 KB, not 91 x 40 KB
    assert _same_bits(placed, windows)
    first = arena.offset_of(placed[0])
    assert first is not None
    hops = [4_000 * i for i in range(91)]
    assert [arena.offset_of(w) for w in placed] == [first + at for at in hops]  # a hop apart
    payload, ats = inline(windows)
    assert len(payload) == wave.nbytes and ats == hops
    del placed
    assert arena.free_bytes == arena.size
    arena.close()


def test_a_padded_window_and_windows_already_in_the_arena_go_beside_the_span() -> None:
    """The zero-padded last window is its own array: copied alone, after the span of the
    waveform's views; a window decoded into the arena stays where it lies."""
    arena = Arena(8 << 20)
    wave = noise(95_500 / RATE, seed=12)
    windows = [w.samples for w in cut(wave, 10_000, 1_000, True, 1_000)]
    padded = windows[-1]
    assert padded.base is None and padded.shape == (10_000,)  # 86_000..95_500, zero-padded
    decoded = arena.array(5_000)
    assert decoded is not None
    decoded[:] = 7.0
    sent = [decoded[:2_000], *windows, decoded[1_000:3_000]]
    before = arena.free_bytes
    placed = arena.place(sent)
    assert placed is not None and placed[0] is sent[0] and placed[-1] is sent[-1]
    span = 4 * (85_000 + 10_000)  # the views cover samples 0..95_000
    assert before - arena.free_bytes == -(-(span + padded.nbytes) // ALIGN) * ALIGN
    assert _same_bits(placed, sent)
    first = arena.offset_of(placed[1])
    assert arena.offset_of(placed[-2]) == int(first or 0) + span  # right after the span
    del placed, decoded, sent
    arena.close()


def test_windows_far_apart_are_copied_one_by_one() -> None:
    """Two windows at either end of a long waveform: not the span between them (4 MB), just
    the two windows; overlapping runs elsewhere in it still share theirs."""
    arena = Arena(8 << 20)
    wave = noise(1_000_000 / RATE, seed=13)
    far = [wave[:10_000], wave[-10_000:]]
    before = arena.free_bytes
    placed = arena.place(far)
    assert placed is not None and before - arena.free_bytes == 80_000
    assert _same_bits(placed, far)
    payload, ats = inline(far)
    assert len(payload) == 80_000 and ats is None  # end to end: the old layout, no offsets
    runs = [wave[:10_000], wave[500_000:510_000], wave[1_000:11_000], wave[502_000:512_000]]
    del placed
    placed = arena.place(runs)  # two runs of two overlapping windows: 11_000 + 12_000 floats
    assert placed is not None and before - arena.free_bytes == 92_032  # 92_000, aligned
    assert _same_bits(placed, runs)
    payload, ats = inline(runs)
    assert len(payload) == 92_000 and ats == [0, 44_000, 4_000, 52_000]
    del placed
    arena.close()


def test_extents_taken_and_dropped_in_many_threads_all_come_back() -> None:
    """Decoders take extents in their threads and drop them anywhere: nothing is lost."""
    arena = Arena(1 << 20)

    def churn(seed: int) -> None:
        rng = np.random.default_rng(seed)
        held: list[np.ndarray] = []
        for _ in range(300):
            block = arena.array(int(rng.integers(1, 4096)), decoded=bool(rng.integers(2)))
            if block is not None:
                block[:] = seed
                held.append(block[: len(block) // 2])  # a view keeps the extent
            if len(held) > 8:
                assert np.all(held.pop(int(rng.integers(len(held)))) == seed)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: races show
    try:
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(churn, seed) for seed in range(4)]:
                done.result()  # a thread's failed check fails the test
    finally:
        sys.setswitchinterval(interval)
    assert arena.free_bytes == arena.size
    whole = arena.array(arena.size // 4)
    assert whole is not None and arena.offset_of(whole) == 0  # merged back into one extent
    del whole
    arena.close()


def test_decoded_waveforms_may_take_half_the_arena() -> None:
    """Waveforms waiting for their turn never leave the windows on their way no room."""
    arena = Arena(1 << 20)
    held = [arena.array(1 << 16, decoded=True) for _ in range(3)]  # 256 KiB each
    assert [h is not None for h in held] == [True, True, False]
    assert arena.array(1 << 17) is not None  # the other half is still there for windows
    held.clear()
    assert arena.array(1 << 17, decoded=True) is not None  # given back: room again
    arena.close()


def test_a_front_decodes_into_its_arena_and_the_engine_reads_it_there(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    """A 16-bit WAV at the model rate is decoded into the arena; its windows (views of the
    waveform) go to the engine as they lie, with no copy, and give the model's scores."""
    x = noise(10.0, seed=9)[: 10 * RATE]
    wav = encode(x, RATE, subtype="PCM_16")
    path = str(tmp_path / "engine.sock")

    async def go() -> tuple[np.ndarray, np.ndarray, bool, bool]:
        tagger, server = await _engine(tagger_bundle, path)
        client = EngineClient(path, arena_bytes=8 << 20)
        await client.connect(30)
        assert client.arena is not None
        wave = decode(wav, RATE, 60, client.waveform).waveform
        in_arena = client.arena.offset_of(wave) is not None
        windows = [w.samples for w in cut(wave, 5 * RATE, 5 * RATE, True, RATE)]
        before = client.arena.free_bytes
        model = next(iter(tagger.models.models))
        results = await client.submit(model, windows, time.monotonic() + 30)
        no_copy = client.arena.free_bytes == before  # no extent taken for the windows
        del wave, windows
        back = client.arena.free_bytes == client.arena.size
        await client.close()
        await tagger.close()
        await server.close()
        got = np.stack([r.outputs["clipwise"] for r in results])
        return got, decode(wav, RATE, 60).waveform, in_arena and no_copy, back

    got, heap_wave, placed_as_decoded, freed = asyncio.run(go())
    assert placed_as_decoded and freed
    for row, start in zip(got, (0, 5 * RATE), strict=True):
        want = run_bundle(tagger_bundle, heap_wave[start : start + 5 * RATE])["clipwise"]
        np.testing.assert_allclose(row, want, atol=1e-5)


def test_a_waveform_too_large_for_half_the_arena_is_decoded_on_the_heap() -> None:
    client = EngineClient("/nonexistent.sock", arena_bytes=1 << 20)
    assert client.arena is not None
    too_big = client.waveform((1 << 17) + 16)  # more than half of the 1 MiB arena
    assert client.arena.offset_of(too_big) is None and too_big.shape == ((1 << 17) + 16,)
    assert client.arena.offset_of(client.waveform(1 << 16)) is not None
    client.arena.close()


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
        # a cancelled request's extent comes back once the engine has answered for it and
        # the task is gone
        task = asyncio.create_task(big.submit(model, [x] * 4, deadline))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        del task  # its exception keeps its frames, and their windows
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


BAD_SUBMITS = [
    ({"ats": [0], "lengths": [1 << 30]}, "outside the arena"),  # past its end
    ({"ats": [2], "lengths": [10]}, "outside the arena"),  # not on a float
    ({"ats": [-64], "lengths": [10]}, "outside the arena"),
    ({"ats": [0, 64], "lengths": [10]}, "2 offsets for 1 windows"),
    ({"ats": ["x"], "lengths": [10]}, "unusable window offsets"),
    ({"ats": None, "lengths": [10]}, "unusable window offsets"),
    ({"lengths": [10]}, "outside the arena"),  # inline, with no payload
    ({"lengths": [1], "bytes_": b"abc"}, "unusable window offsets"),  # not whole floats
    # inline, each window at its byte offset in the payload (10 floats here)
    ({"inline_ats": [8], "lengths": [10], "bytes_": bytes(40)}, "outside the arena"),
    ({"inline_ats": [2], "lengths": [1], "bytes_": bytes(40)}, "outside the arena"),
    ({"inline_ats": [-4], "lengths": [1], "bytes_": bytes(40)}, "outside the arena"),
    ({"inline_ats": [0, 4], "lengths": [1], "bytes_": bytes(40)}, "2 offsets for 1 windows"),
    ({"inline_ats": 0, "lengths": [1], "bytes_": bytes(40)}, "unusable window offsets"),
    ({"inline_ats": ["x"], "lengths": [1], "bytes_": bytes(40)}, "unusable window offsets"),
    ({"ats": [0], "inline_ats": [0], "lengths": [1]}, "both arena and inline offsets"),
    # the output kinds asked for: a list of names, or none
    ({"lengths": [1], "bytes_": bytes(4), "kinds": "clipwise"}, "kinds must be a list"),
    ({"lengths": [1], "bytes_": bytes(4), "kinds": [1]}, "kinds must be a list"),
    ({"lengths": [1], "bytes_": bytes(4), "kinds": ["clipwise"] * 9}, "at most 8 names"),
]


def test_bad_submits_are_an_error_for_that_request_only(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    """A submit whose offsets do not describe windows in the arena fails alone, with a
    message; the connection (and every other request on it) carries on."""
    path = str(tmp_path / "engine.sock")
    x = noise(10.0, seed=6)[: 10 * RATE].astype(np.float32)

    async def go() -> tuple[list[str], int]:
        tagger, server = await _engine(tagger_bundle, path)
        client = EngineClient(path, arena_bytes=1 << 20)
        await client.connect(30)
        model = next(iter(tagger.models.models))
        messages = []
        for fields, _ in BAD_SUBMITS:
            header = {"op": "submit", "model": model, "deadline_in": 10.0, **fields}
            payload = header.pop("bytes_", b"")
            reply, _ = await client._call(header, payload)
            with pytest.raises(TaggingError):
                raise_remote(reply)
            messages.append(str(reply.get("args")))
        still = await client.submit(model, [x], time.monotonic() + 30)  # the engine serves on
        kinds = await client.submit(model, [x], time.monotonic() + 30, ["embedding"])
        assert set(kinds[0].outputs) == {"embedding"}
        np.testing.assert_array_equal(kinds[0].outputs["embedding"], still[0].outputs["embedding"])
        await client.close()
        await tagger.close()
        await server.close()
        return messages, len(still)

    messages, served = asyncio.run(go())
    for message, (_, want) in zip(messages, BAD_SUBMITS, strict=True):
        assert want in message
    assert served == 1
