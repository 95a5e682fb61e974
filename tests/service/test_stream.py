"""WS /v1/stream against a real uvicorn server, with the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.core.stream import LiveStream
from tests.conftest import shared_path
from tests.service.conftest import (
    RATE,
    LiveServer,
    engine_held,
    noise,
    parse_metrics,
    settings_for,
)
from tests.service.streaming import (
    assert_scored_as_tag,
    auth,
    random_frames,
    stream_audio,
    tag_windows,
    ws_url,
)

KEY = "stream-key"


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    settings = settings_for(
        tagger_bundle, max_streams=9, max_frame_kb=64, stream_idle_s=1.5, api_keys=KEY
    )
    live = LiveServer(settings).start()
    yield live
    live.stop()


def recording() -> tuple[np.ndarray, int]:
    """30 s of a real recording (float32, its own rate and channels)."""
    wave, rate = sf.read(shared_path("audio", "dog_howl.ogg"), dtype="float32", always_2d=True)
    return wave[: 30 * rate], rate


def test_streamed_windows_score_as_tag_windows(server: LiveServer) -> None:
    wave, rate = recording()
    opening = {"window_s": 10, "hop_s": 1, "top_k": 5}
    results, end = asyncio.run(
        stream_audio(ws_url(server.url), wave, rate, opening, random_frames(0), paced=True, key=KEY)
    )
    windows = tag_windows(server.url, wave, rate, opening, key=KEY)
    assert end == {"type": "end", "windows": len(windows), "skipped": 0}
    assert len(results) == len(windows) == 21
    assert_scored_as_tag(results, windows)


def detect_window(live: LiveServer, samples: np.ndarray, opening: dict) -> dict:
    """``POST /v1/detect`` for one window's samples (at the model rate), cut and padded as the
    stream's window is, with the stream's event settings (its defaults are /v1/detect's)."""
    r = live.post_clip(
        "/v1/detect",
        "w.wav",
        samples,
        window_s=opening["window_s"],
        top_k=opening["top_k"],
        threshold=opening.get("event_threshold", 0.5),
        min_duration_s=opening.get("min_duration_s", 0.1),
    )
    assert r.status_code == 200, r.text
    result: dict = r.json()["results"][0]
    return result


def assert_detected_as(got: dict, want: dict) -> None:
    """A streamed window's tracks and events are ``want``'s (a /v1/detect result for the
    window's audio), its events moved to the window's place in the stream."""
    assert [t["index"] for t in got["tracks"]] == [t["index"] for t in want["tracks"]]
    for a, b in zip(got["tracks"], want["tracks"], strict=True):
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert [(e["index"], e["label"]) for e in got["events"]] == [
        (e["index"], e["label"]) for e in want["events"]
    ]
    for a, b in zip(got["events"], want["events"], strict=True):
        assert a["start_s"] == pytest.approx(b["start_s"] + got["start_s"], abs=1e-6)
        assert a["end_s"] == pytest.approx(b["end_s"] + got["start_s"], abs=1e-6)
        assert a["peak"] == pytest.approx(b["peak"], abs=1e-5)


def stream_and_detect(live: LiveServer, wave: np.ndarray, opening: dict) -> list[dict]:
    """Stream ``wave`` (at the model rate) and check every window against /v1/detect."""
    sizes = random_frames(5, 100, 20_000)
    url = ws_url(live.url)
    results, end = asyncio.run(stream_audio(url, wave, RATE, opening, sizes, paced=True))
    assert end == {"type": "end", "windows": len(results), "skipped": 0}
    for got in results:
        samples = wave[round(got["start_s"] * RATE) : round(got["end_s"] * RATE)]
        assert_detected_as(got, detect_window(live, samples, opening))
    return results


@pytest.mark.slow
def test_a_framewise_model_streams_tracks_and_events_as_detect(sed_bundle: Path) -> None:
    """A SED model's stream: every window's frame tracks and events are what /v1/detect
    gives for that window's audio (the last window zero-padded in both), with the default
    event settings and with asked ones. A hop of 0.6 s starts a window at 2.4 s, where
    seconds reckoned by division (4.4 - 2.4 > 2) would keep one frame too many."""
    live = LiveServer(settings_for(sed_bundle)).start()
    try:
        wave = noise(5.5, seed=13)[:, None]  # at the model rate: windows hold the same samples
        results = stream_and_detect(live, wave, {"window_s": 2, "hop_s": 1, "top_k": 3})
        assert [(r["start_s"], r["end_s"]) for r in results] == [
            (0, 2),
            (1, 3),
            (2, 4),
            (3, 5),
            (4, 5.5),
        ]
        assert all(len(r["tracks"]) == 3 and r["events"] for r in results)
        asked = {"window_s": 2, "hop_s": 0.6, "top_k": 2, "event_threshold": 0.3}
        results = stream_and_detect(live, wave[: int(4.4 * RATE)], asked | {"min_duration_s": 0.2})
        assert (2.4, 4.4) in [(r["start_s"], r["end_s"]) for r in results]
    finally:
        live.stop()


def test_slow_engine_skips_windows_instead_of_queueing(tagger_bundle: Path) -> None:
    settings = settings_for(tagger_bundle, max_batch=1, max_delay_ms=0)
    live = LiveServer(settings).start()
    try:
        wave = noise(30.0, 3, RATE)[:, None]
        results, end = asyncio.run(
            stream_audio(
                ws_url(live.url),
                wave,
                RATE,
                {"window_s": 2, "hop_s": 0.1},
                random_frames(1, 20_000),
            )
        )
        total = len(results) + sum(r["skipped"] for r in results)
        assert end["skipped"] == sum(r["skipped"] for r in results) > 0
        assert end["windows"] == len(results)
        assert total == 281  # every window was either scored or reported skipped
        starts = [r["start_s"] for r in results]
        assert starts == sorted(starts)
        with live.client() as client:
            assert client.get("/readyz").status_code == 200
            metrics = parse_metrics(client.get("/metrics").text)
        skipped = metrics["panns_stream_skipped_windows_total"]
        assert sum(skipped.values()) == end["skipped"]
        assert sum(metrics["panns_open_streams"].values()) == 0
    finally:
        live.stop()


def test_eight_concurrent_streams(server: LiveServer) -> None:
    """Silent and noisy streams at once: each gets its own windows' results."""
    clips = [np.zeros(6 * 16000, np.float32) if i % 2 else noise(6.0, 7, 16000) for i in range(8)]

    async def run_all() -> list[tuple[list[dict], dict]]:
        jobs = [
            stream_audio(
                ws_url(server.url),
                clip[:, None],
                16000,
                {"window_s": 2, "hop_s": 1, "top_k": 3},
                random_frames(i, 100, 9000),
                paced=True,
                key=KEY,
            )
            for i, clip in enumerate(clips)
        ]
        return await asyncio.gather(*jobs)

    outcomes = asyncio.run(run_all())
    for results, end in outcomes:
        assert end == {"type": "end", "windows": 5, "skipped": 0}
        assert [r["start_s"] for r in results] == [0, 1, 2, 3, 4]
    silent, noisy = outcomes[1][0], outcomes[0][0]
    for i, (results, _) in enumerate(outcomes):
        want = silent if i % 2 else noisy
        assert [r["top"] for r in results] == [r["top"] for r in want]
    assert [r["top"] for r in silent] != [r["top"] for r in noisy]


async def closed_with(
    url: str, first: str | bytes | None, *more: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send ``first`` (and ``more``); the close code and reason the service answers."""
    async with connect(url, additional_headers=headers or {}, max_size=None) as ws:
        try:
            if first is not None:
                await ws.send(first)
            for message in more:
                await ws.send(message)
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("not closed")


def opening(**extra: Any) -> str:
    return json.dumps({"sample_rate": 16000, "api_key": KEY, **extra})


@pytest.mark.parametrize(
    ("first", "more", "code", "reason"),
    [
        (json.dumps({"sample_rate": 16000}), (), 1008, "missing API key"),
        (json.dumps({"sample_rate": 16000, "api_key": "nope"}), (), 1008, "wrong API key"),
        (b"\x00\x01", (), 1003, "JSON"),
        ("{not json", (), 1007, "not valid JSON"),
        (opening(sample_rate=5), (), 1007, "sample_rate"),
        (opening(model="nope"), (), 1007, "no model named"),
        (opening(hop_s=0.001), (), 1007, "hop_s"),
        (opening(colour="red"), (), 1007, "unknown field"),
        (opening(event_threshold=1.5), (), 1007, "event_threshold must be in [0, 1]"),
        (opening(min_duration_s=-1), (), 1007, "min_duration_s must be in [0, 3600]"),
        (opening(min_duration_s="long"), (), 1007, "min_duration_s must be a number"),
        (opening(sample_format="float32"), (np.full(64, np.nan, "<f4").tobytes(),), 1007, "NaN"),
        (opening(), (b"\x00" * (65 * 1024),), 1009, "limit"),
        (opening(), ("hello",), 1007, "end"),
        (None, (), 1001, "no message"),
    ],
)
def test_bad_streams_close_with_a_reason(
    server: LiveServer, first: Any, more: tuple, code: int, reason: str
) -> None:
    got, why = asyncio.run(closed_with(ws_url(server.url), first, *more))
    assert got == code
    assert reason in why


def test_api_key_in_header_and_too_many_streams(server: LiveServer) -> None:
    async def scenario() -> tuple[int, str]:
        url = ws_url(server.url)
        holders = [await connect(url, additional_headers=auth(KEY)) for _ in range(9)]
        try:
            for ws in holders:
                await ws.send(json.dumps({"sample_rate": 16000}))
                assert json.loads(await ws.recv())["type"] == "ready"
            return await closed_with(url, opening())
        finally:
            for ws in holders:
                await ws.close()

    code, reason = asyncio.run(scenario())
    assert (code, "streams are open") == (1013, reason[reason.find("streams") :][:16])
    # a broken or refused stream leaves the service serving the others
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_a_client_gone_after_end_frees_its_stream(
    tagger_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sends end and leaves at once, reading nothing, while the stream still owes it
    the tail: windows in flight, one waiting, the padded last one waiting for room. Sending
    to the gone client fails; the stream must end and give back its place (the only one, so
    the next client would be refused 1013), not wait for room forever. The engine is held
    until the client is gone and the stream is in ``finish``."""
    live = LiveServer(settings_for(tagger_bundle, max_streams=1)).start()
    finishing = threading.Event()
    finish = LiveStream.finish

    async def observed(self: LiveStream) -> None:
        finishing.set()
        await finish(self)

    monkeypatch.setattr(LiveStream, "finish", observed)
    url = ws_url(live.url)
    opening = {"window_s": 2, "hop_s": 1, "top_k": 3}
    wave = noise(5.5, 21)  # windows at 0, 1, 2, 3 and the padded one at 4

    async def end_and_leave() -> None:
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"sample_rate": RATE, "sample_format": "float32", **opening}))
            assert json.loads(await ws.recv())["type"] == "ready"
            for chunk in np.array_split(wave, 11):
                await ws.send(chunk.astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "end"}))
            async with asyncio.timeout(30):
                while not finishing.is_set():
                    await asyncio.sleep(0.01)
        # leaving the block closed the connection: nothing was read after ready

    def open_streams() -> float:
        with live.client() as client:
            return sum(parse_metrics(client.get("/metrics").text)["panns_open_streams"].values())

    try:
        with engine_held(live):
            asyncio.run(end_and_leave())
        deadline = time.monotonic() + 5
        while live.app.state.open_streams or open_streams():
            assert time.monotonic() < deadline, "the stream of the gone client is still open"
            time.sleep(0.05)
        monkeypatch.setattr(LiveStream, "finish", finish)
        results, end = asyncio.run(
            stream_audio(url, wave[:, None], RATE, opening, random_frames(2), paced=True)
        )
        assert end == {"type": "end", "windows": 5, "skipped": 0}
        assert [r["start_s"] for r in results] == [0, 1, 2, 3, 4]
    finally:
        live.stop()
