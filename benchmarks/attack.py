"""A bounded attack on a real service: the cases an attacker found, replayed, with a normal
client measured during each one.

    python benchmarks/attack.py --bundle models/cnn14 [--seconds 6]

Starts ``python -m service`` on 127.0.0.1 (a free port), then for each case runs the attack
in threads for a few seconds while a normal client posts a 1 s clip in a loop. Prints JSON:
per case the statuses seen, the 5xx count, the normal client's success rate, and the
server's RSS before and after; and totals. Everything stays on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NotRequired, TypedDict

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # first: benchmarks/service.py must not shadow the package

from benchmarks.common import free_port, start_service, tree_usage, wait_ready  # noqa: E402
from benchmarks.formats import audio_file, multipart_body  # noqa: E402

RATE = 32000

# One case's JSON; the functional form because "5xx" is not an identifier.
CaseResult = TypedDict(
    "CaseResult",
    {
        "statuses": dict[str, int],
        "5xx": int,
        "normal_success_rate": float,
        "normal_requests": int,
        "rss_before_mb": NotRequired[int],
        "rss_after_mb": NotRequired[int],
    },
)


def noise(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (round(seconds * rate), channels) if channels > 1 else (round(seconds * rate),)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def rss_mb(pid: int) -> int:
    """Resident MB of the server's process tree."""
    return int(tree_usage(pid).rss_mb)


def post(url: str, path: str, data: bytes, params: Mapping[str, str | float] | None = None) -> int:
    try:
        r = httpx.post(f"{url}{path}", params=params, files=[("file", ("a", data))], timeout=30)
        return r.status_code
    except httpx.HTTPError:
        return 0  # connection closed by the server (a limit), or timed out


def raw_socket(url: str, payload: bytes, hold_s: float) -> int:
    """Send ``payload`` then stall ``hold_s``; 0 if the server closed on us, else a status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=hold_s + 20) as s:
        try:
            s.sendall(payload)
            s.settimeout(hold_s + 20)
            reply = s.recv(64)
        except OSError:
            return 0
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else 0


def cases(url: str, sed_model: str | None) -> dict[str, Callable[[], int]]:
    ogg = audio_file(noise(30.0), RATE, "OGG", "VORBIS")
    flac_long = audio_file(np.zeros(RATE * 599, np.float32), RATE, "FLAC")
    huge_float = audio_file(np.full(RATE, 1e30, np.float32), RATE, subtype="FLOAT")
    clip = audio_file(noise(20.0), RATE)
    sed = {"model": sed_model} if sed_model else {}
    head = (
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nContent-Length: 50000000\r\n\r\n--b\r\nContent-Disposition: "
        b'form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    return {
        "window_fan_out": lambda: post(url, "/v1/tag", ogg, {"window_s": 0.31, "hop_s": 0.0003125}),
        "tiny_hop": lambda: post(url, "/v1/tag", ogg, {"window_s": 1, "hop_s": 0.05}),
        "cheap_flac_long": lambda: post(url, "/v1/tag", flac_long),
        "detect_fps_tiny": lambda: post(
            url, "/v1/detect", clip, {"frames_per_second": 1e-7, **sed}
        ),
        "detect_fps_denormal": lambda: post(
            url, "/v1/detect", clip, {"frames_per_second": 5e-324, **sed}
        ),
        "detect_everything": lambda: post(
            url, "/v1/detect", clip, {"top_k": 1000, "threshold": 0, "min_duration_s": 0, **sed}
        ),
        "float_1e30": lambda: post(url, "/v1/tag", huge_float),
        "long_boundary": lambda: _long_boundary(url, clip),
        "huge_header": lambda: _huge_header(url),
        "stalled_upload": lambda: raw_socket(url, head + b"x" * 1_000_000, hold_s=3),
    }


def _long_boundary(url: str, data: bytes) -> int:
    boundary = "b" * 300
    try:
        return httpx.post(
            f"{url}/v1/tag",
            content=multipart_body(data, "a", boundary),
            timeout=30,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ).status_code
    except httpx.HTTPError:
        return 0


def _huge_header(url: str) -> int:
    try:
        return httpx.get(
            f"{url}/healthz", headers={"X-Big": "a" * 5_000_000}, timeout=30
        ).status_code
    except httpx.HTTPError:
        return 0


def attack(url: str, fn: Callable[[], int], seconds: float, clients: int) -> CaseResult:
    """``clients`` threads repeat ``fn`` for ``seconds`` while one normal client tags a clip
    every 0.1 s: the statuses the attack got and how the normal client fared."""
    statuses: Counter[int] = Counter()
    normal: list[bool] = []
    stop = time.monotonic() + seconds
    good = audio_file(noise(1.0), RATE)

    def attacker() -> None:
        while time.monotonic() < stop:
            statuses[fn()] += 1

    def victim() -> None:
        while time.monotonic() < stop:
            normal.append(post(url, "/v1/tag", good) == 200)
            time.sleep(0.1)

    threads = [threading.Thread(target=attacker) for _ in range(clients)]
    threads.append(threading.Thread(target=victim))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "normal_success_rate": round(sum(normal) / max(1, len(normal)), 3),
        "normal_requests": len(normal),
    }


def start(bundles: list[Path], port: int) -> subprocess.Popen[bytes]:
    """The service under attack: one worker, short idle and upload timeouts, output discarded
    (not yet ready: ``main`` waits for it inside the block that stops it)."""
    settings = {
        "PANNS_MODELS": ",".join(str(b) for b in bundles),
        "PANNS_WORKERS": "1",
        "PANNS_IDLE_TIMEOUT_S": "2",
        "PANNS_UPLOAD_TIMEOUT_S": "10",
    }
    return start_service(port, settings, quiet=True)


def _sed_model(bundles: list[Path]) -> str | None:
    """The first bundle whose card has frames per second (a SED model), by name."""
    cards = [json.loads((b / "model.json").read_text()) for b in bundles]
    return next((str(c["name"]) for c in cards if c.get("frames_per_second")), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle",
        type=Path,
        action="append",
        required=True,
        help="model bundle to serve (repeat: a SED model makes the "
        "/v1/detect cases reach the detection code)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each attack")
    parser.add_argument("--clients", type=int, default=3, help="attacking threads")
    args = parser.parse_args()
    port = free_port()
    proc = start(args.bundle, port)
    url = f"http://127.0.0.1:{port}"
    report: dict[str, CaseResult] = {}
    try:
        wait_ready(port, proc, timeout=180)
        for name, fn in cases(url, _sed_model(args.bundle)).items():
            before = rss_mb(proc.pid)
            result = attack(url, fn, args.seconds, args.clients)
            time.sleep(1.0)
            result["rss_before_mb"], result["rss_after_mb"] = before, rss_mb(proc.pid)
            report[name] = result
    finally:
        proc.terminate()
        code = proc.wait(60)
    total = {
        "cases": len(report),
        "requests": sum(sum(r["statuses"].values()) for r in report.values()),
        "5xx": sum(r["5xx"] for r in report.values()),
        "min_normal_success_rate": min(r["normal_success_rate"] for r in report.values()),
        "exit_status": code,
    }
    print(json.dumps({"total": total, "cases": report}, indent=2))


if __name__ == "__main__":
    main()
