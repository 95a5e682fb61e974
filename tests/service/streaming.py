"""WS /v1/stream helpers shared by the stream tests: send a recording as PCM frames with the
real ``websockets`` client, and compare what comes back with what ``/v1/tag`` answers for the
same audio."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.service.conftest import encode, files


def ws_url(base_url: str) -> str:
    """The stream door of the service at ``base_url`` (``http://host:port``)."""
    return base_url.replace("http://", "ws://") + "/v1/stream"


def auth(key: str | None) -> dict[str, str]:
    """The bearer header for ``key``; none without one."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def random_frames(seed: int, low: int = 1, high: int = 60_000) -> Iterator[int]:
    """Endless seeded frame sizes in bytes (samples split across frames on purpose)."""
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


async def stream_audio(
    url: str,
    wave: np.ndarray,
    rate: int,
    opening: dict[str, Any],
    frames: Iterator[int],
    paced: bool = False,
    key: str | None = None,
) -> tuple[list[dict], dict]:
    """Send ``wave`` (samples, channels) as float32 frames of the sizes ``frames`` gives (in
    bytes), with ``key`` as a bearer token; the results and the final message. ``paced``:
    never more than one window ahead of the results (as a real-time source is), so that none
    is skipped."""
    data = np.ascontiguousarray(wave, dtype="<f4").tobytes()
    results: list[dict] = []
    data_rate = 4 * wave.shape[1] * rate
    async with connect(url, additional_headers=auth(key), max_size=None) as ws:
        first = {"sample_rate": rate, "channels": wave.shape[1], "sample_format": "float32"}
        await ws.send(json.dumps({**first, **opening}))
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


def tag_windows(
    base_url: str, wave: np.ndarray, rate: int, params: dict[str, Any], key: str | None = None
) -> list[dict]:
    """The per-window results ``POST /v1/tag`` gives for ``wave`` uploaded as a WAV file."""
    r = httpx.post(
        f"{base_url}/v1/tag",
        params=params,
        files=files(("clip.wav", encode(wave, rate))),
        headers=auth(key),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    windows: list[dict] = r.json()["results"][0]["windows"]
    return windows


def assert_scored_as_tag(results: list[dict], windows: list[dict]) -> None:
    """Streamed results, none skipped, have the spans and top labels and scores of
    ``/v1/tag``'s windows for the same audio, one for one."""
    assert len(results) == len(windows)
    for got, want in zip(results, windows, strict=True):
        assert got["skipped"] == 0
        assert got["start_s"] == pytest.approx(want["start_s"], abs=1e-6)
        assert got["end_s"] == pytest.approx(want["end_s"], abs=1e-6)
        assert [t["index"] for t in got["top"]] == [t["index"] for t in want["top"]]
        np.testing.assert_allclose(
            [t["score"] for t in got["top"]], [t["score"] for t in want["top"]], atol=1e-5
        )
