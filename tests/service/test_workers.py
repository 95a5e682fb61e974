"""PANNS_WORKERS=2: one engine process, two front processes, one consistent service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import supervisor
from service.core.card import read_card
from service.core.handoff import send_arena
from service.supervisor import MAX_QUICK_EXITS, QUICK_EXIT_S, Supervisor, restart_delay
from tests.service.conftest import (
    RATE,
    encode,
    files,
    metric_total,
    noise,
    parse_metrics,
    run_bundle,
    service_process,
    settings_for,
)
from tests.service.streaming import (
    assert_scored_as_tag,
    random_frames,
    stream_audio,
    tag_windows,
    ws_url,
)

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _fronts(pid: int) -> list[int]:
    fronts = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # reaped since pgrep listed it (a killed front being replaced)
        if b"front" in cmdline:
            fronts.append(child)
    return fronts


def _stream_scores_like_tag(url: str) -> None:
    """A live stream through a front: its windows go to the engine like uploads do."""
    wave, rate = noise(14.0, seed=43)[:, None], RATE  # stereo mix-down is test_stream's
    opening = {"window_s": 10, "hop_s": 1, "top_k": 5}
    results, end = asyncio.run(
        stream_audio(ws_url(url), wave, rate, opening, random_frames(3), paced=True)
    )
    windows = tag_windows(url, wave, rate, opening)
    assert end == {"type": "end", "windows": 5, "skipped": 0}
    assert_scored_as_tag(results, windows)


def _oip_scores_like_tag(url: str, wave: np.ndarray, tagged: tuple[float, ...]) -> None:
    """OIP v2 on a front (a waveform tensor, written into the front's arena) gives the
    scores /v1/tag gave for the same samples."""
    model = httpx.get(f"{url}/v1/models").json()["models"][0]["name"]
    tensor = {"name": "waveform", "shape": [1, wave.shape[0]], "datatype": "FP32"}
    body = {"inputs": [{**tensor, "data": wave.tolist()}]}
    r = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (out,) = [o for o in r.json()["outputs"] if o["name"] == "clipwise_output"]
    np.testing.assert_allclose(out["data"], tagged, atol=1e-6, rtol=0)


def test_two_fronts_share_one_engine(tagger_bundle: Path) -> None:
    waves = [noise(3.0, seed=41 + i) for i in range(4)]
    clips = [encode(wave, RATE) for wave in waves]
    clip = clips[0]
    with service_process(tagger_bundle, workers=2, warmup="none", max_delay_ms=20) as svc:
        url, proc = svc.url, svc.proc
        assert len(_fronts(proc.pid)) == 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: httpx.post(
                        f"{url}/v1/tag", files=files(("a.wav", clips[i % 4])), timeout=60
                    ),
                    range(16),
                )
            )
        refused = [(r.status_code, r.text[:300]) for r in answers if r.status_code != 200]
        assert not refused, refused
        # the same numbers whichever front answered, and each clip its own (the fronts
        # decode into shared memory: no window may be read after another took its place)
        scores = [
            {tuple(r.json()["results"][0]["scores"]) for r in answers[i::4]} for i in range(4)
        ]
        assert all(len(group) == 1 for group in scores)
        assert len(set().union(*scores)) == 4
        _oip_scores_like_tag(url, waves[0], next(iter(scores[0])))
        metrics = parse_metrics(httpx.get(f"{url}/metrics").text)
        assert metric_total(metrics, "panns_requests_total", endpoint="/v1/tag") == 16
        sizes = metrics["panns_batch_size_count"]
        assert sum(sizes.values()) < 16  # windows of both fronts shared batches
        # each process froze what it loaded after one full collection, timed and reported
        # by the engine (at its first batch) and by every front that answered
        assert metric_total(metrics, "panns_gc_pause_seconds_count", generation="2") >= 2
        victim = _fronts(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in _fronts(proc.pid) or len(_fronts(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the dead front was not replaced"
            time.sleep(0.2)
        for _ in range(6):  # the service keeps serving whichever front answers
            r = httpx.post(f"{url}/v1/tag", files=files(("a.wav", clip)), timeout=60)
            assert r.status_code == 200
        _stream_scores_like_tag(url)
    # Leaving the block sent SIGTERM: the engine and both fronts stopped cleanly.
    assert proc.returncode == 0, svc.output()[-2000:]


def test_bad_settings_stop_the_start_with_one_line_each(tagger_bundle: Path) -> None:
    """A bad ``PANNS_*`` value names the variable and why, instead of a traceback."""
    env = {
        **os.environ,
        "PANNS_MODELS": str(tagger_bundle),
        "PANNS_WORKERS": "-1",
        "PANNS_MAX_BATCH": "many",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "PANNS_WORKERS: Input should be greater than or equal to 0" in done.stderr
    assert "PANNS_MAX_BATCH: Input should be a valid integer" in done.stderr


def _engine_that_never_loads(path: str, done: threading.Event) -> None:
    """A stand-in engine on a real Unix socket: it takes a front's arena, passes back no
    answer arena, and answers the hello with the failure a real engine sends when its
    models do not load."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        server.settimeout(60)
        conn, _ = server.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 5, 1)
            for fd in fds:
                os.close(fd)
            send_arena(conn, None)
            (size,) = struct.unpack("<I", conn.recv(4, socket.MSG_WAITALL))
            hello = json.loads(conn.recv(size, socket.MSG_WAITALL))
            answer = json.dumps(
                {"id": hello["id"], "ok": False, "ready": False, "error": "never", "bytes": 0}
            ).encode()
            conn.sendall(struct.pack("<I", len(answer)) + answer)
            done.wait(60)


def test_a_front_without_a_ready_engine_exits_to_be_replaced(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    """A front whose engine is not ready when its wait ends exits with status 1 (the
    supervisor starts a fresh one), rather than answering 503 not_ready for ever."""
    path, done = str(tmp_path / "engine.sock"), threading.Event()
    engine = threading.Thread(target=_engine_that_never_loads, args=(path, done), daemon=True)
    engine.start()
    (tmp_path / "metrics").mkdir()
    env = {
        **os.environ,
        "PANNS_MODELS": str(tagger_bundle),
        "PANNS_ENGINE_SOCKET": path,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    with socket.create_server(("127.0.0.1", 0)) as listener:
        front = subprocess.Popen(
            [sys.executable, "-m", "service.supervisor", "front", str(listener.fileno())],
            env=env,
            pass_fds=(listener.fileno(),),
        )
        try:
            assert front.wait(timeout=90) == 1
        finally:
            done.set()
            if front.poll() is None:
                front.kill()
                front.wait()


def test_each_door_gets_the_outputs_it_reads_through_a_front(
    tagger_bundle: Path, sed_bundle: Path
) -> None:
    """A front asks the engine only for the outputs a door reads (/v1/tag: clipwise,
    /v1/embed: embedding, /v1/detect and streams: frame scores): each still gets what the
    model computed, a framewise model's stream its tracks included."""
    x = noise(3.0, seed=17)
    sed, tagger = run_bundle(sed_bundle, x), run_bundle(tagger_bundle, x)
    card = read_card(sed_bundle)
    assert card.frames_per_second is not None
    with service_process(tagger_bundle, sed_bundle, workers=2, warmup="none") as svc:

        def upload(path: str, **params: str | int) -> dict:
            r = httpx.post(
                f"{svc.url}{path}",
                params={"pad": "false", **params},
                files=files(("a.wav", encode(x, RATE))),
                timeout=120,
            )
            assert r.status_code == 200, r.text
            return dict(r.json()["results"][0])

        tag, embed = upload("/v1/tag", model=card.name), upload("/v1/embed")
        detect = upload("/v1/detect", model=card.name, top_k=1)
        opening = {"model": card.name, "window_s": 2, "hop_s": 1, "top_k": 3}
        streamed, end = asyncio.run(
            stream_audio(
                ws_url(svc.url), noise(4.0, 13)[:, None], RATE, opening, random_frames(5), True
            )
        )
    np.testing.assert_allclose(tag["scores"], sed["clipwise"], atol=1e-4)
    np.testing.assert_allclose(embed["embedding"], tagger["embedding"], atol=1e-4)
    frames = sed["framewise"][: int(np.ceil(3.0 * card.frames_per_second))]
    (track,) = detect["tracks"]
    np.testing.assert_allclose(track["scores"], frames[:, track["index"]], atol=1e-4)
    assert end["windows"] == len(streamed) == 3
    assert all(len(r["tracks"]) == 3 for r in streamed)


def test_restart_waits_grow_for_fronts_that_die_young_then_give_up() -> None:
    waits = []
    quick = 0
    for _ in range(5):
        quick, wait = restart_delay(0.5, quick)
        waits.append(wait)
    assert waits == [2.0, 4.0, 8.0, 16.0, None]
    assert restart_delay(QUICK_EXIT_S + 1, 3) == (0, 0.0)  # it had served: at once, count reset


class _FrontsThatCannotStart(Supervisor):
    """The real supervisor and engine, with fronts that die at once (as one whose own start
    fails does: no arena memory, a socket it may not open)."""

    spawned = 0

    def _spawn_front(self) -> subprocess.Popen[bytes]:
        self.spawned += 1
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_fronts_that_keep_dying_at_start_up_stop_the_service(
    tagger_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No restart storm: replacements wait longer each time, and after five fronts of one
    slot died young the service stops with status 1 (its engine too), for the orchestrator."""
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_S", 0.05)
    monkeypatch.setenv("PANNS_MODELS", str(tagger_bundle))
    monkeypatch.setenv("PANNS_WARMUP", "none")
    monkeypatch.setenv("PANNS_THREADS", "1")
    watcher = _FrontsThatCannotStart(settings_for(tagger_bundle, workers=2, port=0))
    started = time.monotonic()
    watcher.start()
    try:
        assert watcher.watch() == 1
    finally:
        if watcher.engine is not None and watcher.engine.poll() is None:
            watcher.engine.kill()
    assert time.monotonic() - started < 60
    assert watcher.engine is not None and watcher.engine.returncode is not None
    assert MAX_QUICK_EXITS <= watcher.spawned <= 2 * MAX_QUICK_EXITS
