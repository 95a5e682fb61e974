"""A real service process gives the memory of a large upload back, whatever became of it.

Server processes keep per-request buffers in the reused C heap (``service.core.heap``); a
request whose body passed 32 MiB must not leave its hundreds of MB resident: neither when
it is answered nor when it is refused after decoding."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import RATE, encode, files, noise, service_process

pytestmark = pytest.mark.slow

# what a large request may leave behind: heap kept for reuse, caches, fragments
SLACK_MB = 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def settled_rss_mb(pid: int, below: float, timeout_s: float = 10.0) -> float:
    """The RSS once it has dropped under ``below`` (the heap is trimmed in a thread after
    the response), or what it still is after ``timeout_s``."""
    ends = time.monotonic() + timeout_s
    while (rss := rss_mb(pid)) >= below and time.monotonic() < ends:
        time.sleep(0.2)
    return rss


def long_wav(minutes: float, subtype: str) -> bytes:
    clip = noise(10.0, seed=3)
    return encode(np.tile(clip, round(minutes * 6)), RATE, "WAV", subtype)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_large_uploads_leave_no_memory_behind(tagger_bundle: Path) -> None:
    limits = {"max_upload_mb": 300, "max_audio_s": 3600, "max_request_audio_s": 3600}
    settings = {"workers": 1, "threads": 1, "warmup": "none", **limits}
    with (
        service_process(tagger_bundle, **settings) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        # full batches first: ONNX Runtime's arena grows to its peak once, and stays
        warm = encode(np.tile(noise(10.0, seed=1), 16), RATE, "WAV", "PCM_16")
        for _ in range(3):
            assert client.post("/v1/tag", files=files(("warm.wav", warm))).status_code == 200
        base = rss_mb(server.proc.pid)

        # 30 min: 115 MB of body and 230 MB of waveform, refused after decoding (180 windows)
        refused = client.post("/v1/tag", files=files(("long.wav", long_wav(30, "PCM_16"))))
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["code"] == "request_too_large"
        after_refused = settled_rss_mb(server.proc.pid, base + SLACK_MB)
        assert after_refused < base + SLACK_MB, (base, after_refused)

        # 5 min of float WAV: a 38 MB body, answered (30 windows)
        answered = client.post("/v1/tag", files=files(("float.wav", long_wav(5, "FLOAT"))))
        assert answered.status_code == 200, answered.text
        after_answered = settled_rss_mb(server.proc.pid, base + SLACK_MB)
        assert after_answered < base + SLACK_MB, (base, after_answered)
