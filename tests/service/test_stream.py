"""WS /v1/stream against a real uvicorn server, with the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import shared_path
from tests.service.conftest import RATE, LiveServer, encode, noise, parse_metrics, settings_for

KEY = "stream-key"


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    settings = settings_for(
        tagger_bundle, max_streams=9, max_frame_kb=64, stream_idle_s=1.5, api_keys=KEY
    )
    live = LiveServer(settings).start()
    yield live
    live.stop()


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream"


def recording() -> tuple[np.ndarray, int]:
    """30 s of a real recording (float32, its own rate and channels)."""
    wave, rate = sf.read(shared_path("audio", "dog_howl.ogg"), dtype="float32", always_2d=True)
    return wave[: 30 * rate], rate


async def stream_audio(
    url: str,
    wave: np.ndarray,
    rate: int,
    opening: dict[str, Any],
    frames: Iterator[int],
    paced: bool = False,
) -> tuple[list[dict], dict]:
    """Send ``wave`` as float32 frames of the sizes ``frames`` gives (in bytes); the
    results and the final message. ``paced``: never more than one window ahead of the
    results (as a real-time source is), so that none is skipped."""
    data = np.ascontiguousarray(wave, dtype="<f4").tobytes()
    results: list[dict] = []
    data_rate = 4 * wave.shape[1] * rate
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "sample_rate": rate,
                    "channels": wave.shape[1],
                    "sample_format": "float32",
                    **opening,
                }
            )
        )
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"

        async def reader() -> dict:
            async for text in ws:
                message = json.loads(text)
                if message["type"] == "end":
                    return message
                results.append(message)
            raise AssertionError("closed without an end message")

        task = asyncio.ensure_future(reader())
        at = 0
        while at < len(data):
            size = next(frames)
            await ws.send(data[at : at + size])
            at += size
            sent_s = at / data_rate
            while paced and len(results) < (sent_s - ready["window_s"]) // ready["hop_s"]:
                await asyncio.sleep(0.005)
        await ws.send(json.dumps({"type": "end"}))
        end = await task
    return results, end


def random_frames(seed: int, low: int = 1, high: int = 60_000) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


def test_streamed_windows_score_as_tag_windows(server: LiveServer) -> None:
    wave, rate = recording()
    opening = {"window_s": 10, "hop_s": 1, "top_k": 5}
    results, end = asyncio.run(
        stream_audio(ws_url(server), wave, rate, opening, random_frames(0), paced=True)
    )
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        body = encode(wave, rate)
        r = client.post(
            "/v1/tag",
            params={"window_s": 10, "hop_s": 1, "top_k": 5},
            files={"file": ("clip.wav", body)},
        )
    assert r.status_code == 200, r.text
    windows = r.json()["results"][0]["windows"]
    assert end == {"type": "end", "windows": len(windows), "skipped": 0}
    assert len(results) == len(windows) == 21
    for got, want in zip(results, windows, strict=True):
        assert got["skipped"] == 0
        assert got["start_s"] == pytest.approx(want["start_s"], abs=1e-6)
        assert got["end_s"] == pytest.approx(want["end_s"], abs=1e-6)
        assert [t["index"] for t in got["top"]] == [t["index"] for t in want["top"]]
        np.testing.assert_allclose(
            [t["score"] for t in got["top"]], [t["score"] for t in want["top"]], atol=1e-5
        )


def test_slow_engine_skips_windows_instead_of_queueing(tagger_bundle: Path) -> None:
    settings = settings_for(tagger_bundle, max_batch=1, max_delay_ms=0)
    live = LiveServer(settings).start()
    try:
        wave = noise(30.0, 3, RATE)[:, None]
        results, end = asyncio.run(
            stream_audio(
                ws_url(live),
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
                ws_url(server),
                clip[:, None],
                16000,
                {"window_s": 2, "hop_s": 1, "top_k": 3},
                random_frames(i, 100, 9000),
                paced=True,
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
        (opening(sample_format="float32"), (np.full(64, np.nan, "<f4").tobytes(),), 1007, "NaN"),
        (opening(), (b"\x00" * (65 * 1024),), 1009, "limit"),
        (opening(), ("hello",), 1007, "end"),
        (None, (), 1001, "no message"),
    ],
)
def test_bad_streams_close_with_a_reason(
    server: LiveServer, first: Any, more: tuple, code: int, reason: str
) -> None:
    got, why = asyncio.run(closed_with(ws_url(server), first, *more))
    assert got == code
    assert reason in why


def test_api_key_in_header_and_too_many_streams(server: LiveServer) -> None:
    async def scenario() -> tuple[int, str]:
        url, auth = ws_url(server), {"Authorization": f"Bearer {KEY}"}
        holders = [await connect(url, additional_headers=auth) for _ in range(9)]
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
