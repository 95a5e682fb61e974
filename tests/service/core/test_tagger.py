"""The tagging core without HTTP: the Tagger on real bundles, and what the core imports."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import SyncTagger, Tagger, TagOptions, WindowSpec
from service.core.audiocheck import UnsupportedFormat
from service.core.card import read_card
from service.core.errors import (
    InvalidParameters,
    MissingOutput,
    TimedOut,
    TooMuchWork,
    UnknownModel,
)
from service.core.inputs import AudioInput
from service.core.pipeline import Limits, prepare
from tests.conftest import REPO_ROOT, shared_path
from tests.service.conftest import RATE, LiveServer, encode, files, noise, run_bundle, settings_for


def test_the_core_imports_no_http_layer_and_no_torch() -> None:
    code = (
        "import sys, service, service.core.tagger, service.core.backends.ort; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'torch', 'training') "
        "or m in ('service.app', 'service.errors', 'service.schemas', 'service.upload', "
        "'service.deps') or m.startswith('service.routes')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_async_tagger_matches_the_graph(tagger_bundle: Path) -> None:
    x = noise(10.0, seed=21)

    async def go() -> tuple[np.ndarray, list[str]]:
        async with Tagger(settings=settings_for(tagger_bundle)) as tagger:
            result = await tagger.tag((x, RATE))
            bad = await tagger.tag_many([b"not audio", encode(x, RATE)])
            return result.scores, [type(r.error).__name__ for r in bad]  # type: ignore[return-value]

    scores, errors = asyncio.run(go())
    np.testing.assert_allclose(scores, run_bundle(tagger_bundle, x)["clipwise"], atol=1e-5)
    assert errors == ["UnsupportedFormat", "NoneType"]


def test_sync_tagger_equals_rest_on_real_recordings(tagger_bundle: Path) -> None:
    paths = sorted(p for p in shared_path("audio").iterdir() if p.suffix in (".wav", ".ogg"))[:4]
    settings = settings_for(tagger_bundle)
    server = LiveServer(settings).start()
    try:
        with server.client() as c:
            rest = c.post("/v1/tag", files=files(*((p.name, p.read_bytes()) for p in paths)))
        assert rest.status_code == 200, rest.text
        with SyncTagger(settings=settings) as tagger:
            local = list(tagger.map(paths, concurrency=3))
            one = tagger.tag(paths[0], options=TagOptions(top_k=3))
    finally:
        server.stop()
    for entry, result in zip(rest.json()["results"], local, strict=True):
        assert result.error is None and result.scores is not None
        np.testing.assert_allclose(result.scores, entry["scores"], atol=1e-6)
        assert [t.index for t in result.top or []] == [t["index"] for t in entry["top"]]
    assert len(one.top or []) == 3


def test_domain_errors(tagger_bundle: Path) -> None:
    with SyncTagger(settings=settings_for(tagger_bundle)) as tagger:
        with pytest.raises(UnsupportedFormat):
            tagger.tag(b"\x00" * 64)
        with pytest.raises(UnknownModel):
            tagger.tag(encode(noise(1.0, 1), RATE), model="nope")
        with pytest.raises(InvalidParameters, match="hop_s"):
            tagger.tag(encode(noise(1.0, 1), RATE), window=WindowSpec(hop_s=0.001))
        with pytest.raises(MissingOutput):
            tagger.detect(encode(noise(1.0, 1), RATE))


def test_window_fan_out_is_bounded(tagger_bundle: Path) -> None:
    with SyncTagger(settings=settings_for(tagger_bundle, max_windows=20)) as tagger:
        result = next(
            iter(
                tagger.map(
                    [encode(noise(30.0, 2), RATE)], window=WindowSpec(window_s=1.0, hop_s=1.0)
                )
            )
        )
    assert result.error is not None and result.error.code == "request_too_large"
    assert "limit is 20" in result.error.message


def test_a_request_that_waited_past_its_deadline_for_a_decoder_is_not_decoded(
    tagger_bundle: Path,
) -> None:
    """Every decoding thread is busy (held here) past a request's deadline: when one frees,
    the request ends with ``TimedOut`` (504) instead of decoding and cutting then; its time
    was up before its work began. The next request is served."""
    flac = encode(noise(20.0, 3), RATE, "FLAC", "PCM_16")  # not inline: a decoding thread

    class Decoded:
        """The files the tagger reports decoded (``FileEvents``)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def file_done(self, model: str, seconds: float) -> None:
            self.seconds.append(seconds)

        def file_failed(self, code: str) -> None: ...

    decoded = Decoded()

    async def main() -> None:
        async with Tagger(settings=settings_for(tagger_bundle), events=decoded) as tagger:
            held = threading.Event()
            pool = tagger._decoders
            blockers = [pool.submit(held.wait, 10) for _ in range(pool._max_workers)]
            late = asyncio.create_task(tagger.tag(flac, timeout_s=0.2))
            await asyncio.sleep(0.4)  # past its deadline, still waiting for a thread
            held.set()
            for blocker in blockers:
                blocker.result(5)
            with pytest.raises(TimedOut, match="deadline"):
                await asyncio.wait_for(late, 10)
            assert decoded.seconds == []  # refused before decoding, not after
            assert (await tagger.tag(flac)).scores is not None
            assert decoded.seconds == [pytest.approx(20.0)]

    asyncio.run(main())


def test_long_windows_count_by_their_length(tagger_bundle: Path) -> None:
    """Windows are bounded by length too, in the model's own windows (10 s): 7 windows of 60 s
    (overlapping, from 66 s of audio) are 42 such windows, past a limit of 12; 2 windows of
    60 s are 12 and pass. A window's compute, memory and hand-off bytes grow with its length."""
    card = read_card(tagger_bundle)
    wave = np.zeros(card.sample_rate * 66, np.float32)
    limits = Limits(per_file_s=600, per_request_s=1800, max_windows=12, min_hop_s=0.05)

    def prepared(hop_s: float) -> list[object]:
        (work,) = prepare(
            [AudioInput("a", waveform=wave, sample_rate=card.sample_rate)],
            card,
            WindowSpec(window_s=60.0, hop_s=hop_s),
            limits,
        )
        return [work.error, len(work.windows)]

    error, windows = prepared(1.0)
    assert isinstance(error, TooMuchWork) and windows == 0
    assert "420 s of audio" in error.message and "limit is 120 s" in error.message
    assert prepared(60.0) == [None, 2]


def test_a_refused_input_is_let_go_at_once(tagger_bundle: Path) -> None:
    """A file refused after decoding keeps its error, not its audio: the error's traceback
    would hold the decoding frame (and the upload) in a cycle until the garbage collector
    ran, which in a quiet server can be long after the request."""
    card = read_card(tagger_bundle)
    wave = np.zeros(card.sample_rate * 20, np.float32)
    alive = weakref.ref(wave)
    gc.disable()
    try:
        (work,) = prepare(
            [AudioInput("a", waveform=wave, sample_rate=card.sample_rate)],
            card,
            WindowSpec(),
            Limits(per_file_s=600, per_request_s=1800, max_windows=0, min_hop_s=0.05),
        )
        assert isinstance(work.error, TooMuchWork)
        del wave, work
        assert alive() is None
    finally:
        gc.enable()


def test_work_the_drain_gave_up_on_fails_with_batcher_stopped(tagger_bundle: Path) -> None:
    """``close(timeout_s)`` past its time stops the batchers and the decoding threads: a
    request decoded before then, ending after (its heap trimmed in a decoding thread), and
    one decoding after then fail with ``BatcherStopped`` (503 ``shutting_down``), never with
    the thread pool's ``RuntimeError: cannot schedule new futures after shutdown`` (500)."""
    big = noise(270.0, seed=23)  # decoded, over LARGE_REQUEST_BYTES: trimmed afterwards
    flac = encode(noise(5.0, seed=24), RATE, "FLAC", "PCM_16")  # decoded in a thread

    async def go() -> list[str]:
        tagger = await Tagger(settings=settings_for(tagger_bundle, max_audio_s=300)).start()
        decoded, resume = asyncio.Event(), asyncio.Event()
        infer = tagger.infer

        async def held(*args: Any) -> None:
            decoded.set()
            await resume.wait()
            await infer(*args)

        tagger.infer = held  # type: ignore[method-assign]
        first = asyncio.create_task(tagger.tag((big, RATE)))
        await decoded.wait()
        await tagger.close(timeout_s=0)  # gives up on it at once
        resume.set()
        errors = []
        for work in (first, tagger.tag(flac)):
            try:
                await work
            except Exception as exc:
                errors.append(type(exc).__name__)
        return errors

    assert asyncio.run(go()) == ["BatcherStopped", "BatcherStopped"]
