"""Downloading official checkpoints, against a real HTTP server started by the test (no network)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from training.checkpoints import (
    CheckpointError,
    OfficialCheckpoint,
    checkpoint_url,
    download,
    verify,
)
from training.checkpoints.registry import BASE_URL_ENV, OFFICIAL

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = random.Random(0).randbytes(300_000)
ENTRY = OfficialCheckpoint(
    "Cnn6", "Fake_mAP=0.123.pth", 0.123, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest()
)


@dataclass
class FileServer:
    """A local HTTP server serving ``payload`` at every path; it records each request."""

    payload: bytes = PAYLOAD
    honor_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0
    url: str = ""


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
            if not state.honor_range or not rng:
                start = 0
            body = state.payload[start:]
            self.send_response(206 if start else 200)
            if start:
                total = len(state.payload)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                body, state.cut_after = body[: state.cut_after], None
                self.close_connection = True
            self.wfile.write(body)
            state.bytes_sent += len(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/files"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fresh_download(server: FileServer, tmp_path: Path) -> None:
    path = download(ENTRY, tmp_path, base_url=server.url, progress=False)
    assert path == tmp_path / ENTRY.file_name
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / (ENTRY.file_name + ".part")).exists()
    assert server.requests == [("/files/Fake_mAP%3D0.123.pth", None)]


def test_resume_requests_only_the_remainder(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / (ENTRY.file_name + ".part")).write_bytes(PAYLOAD[:100_000])
    path = download(ENTRY, tmp_path, base_url=server.url, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/files/Fake_mAP%3D0.123.pth", "bytes=100000-")]
    assert server.bytes_sent == len(PAYLOAD) - 100_000


def test_interrupted_download_is_kept_and_resumed(server: FileServer, tmp_path: Path) -> None:
    server.cut_after = 120_000
    with pytest.raises(CheckpointError, match="120000 bytes received are kept") as info:
        download(ENTRY, tmp_path, base_url=server.url, progress=False)
    _assert_hand_placement(str(info.value), tmp_path, f"{server.url}/Fake_mAP%3D0.123.pth")
    assert (tmp_path / (ENTRY.file_name + ".part")).stat().st_size == 120_000
    assert download(ENTRY, tmp_path, base_url=server.url, progress=False).read_bytes() == PAYLOAD
    assert server.requests[1][1] == "bytes=120000-"
    assert server.bytes_sent == len(PAYLOAD)


def test_server_ignoring_range_restarts(server: FileServer, tmp_path: Path) -> None:
    server.honor_range = False
    (tmp_path / (ENTRY.file_name + ".part")).write_bytes(PAYLOAD[:100_000])
    path = download(ENTRY, tmp_path, base_url=server.url, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.bytes_sent == len(PAYLOAD)


def test_hash_mismatch_is_rejected_and_removed(server: FileServer, tmp_path: Path) -> None:
    wrong = replace(ENTRY, sha256="0" * 64)
    with pytest.raises(CheckpointError, match=r"corrupt.*SHA-256.*deleted") as info:
        download(wrong, tmp_path, base_url=server.url, progress=False)
    assert "0" * 64 in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_partial_file_that_is_not_a_prefix_is_rejected(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / (ENTRY.file_name + ".part")).write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError, match="SHA-256"):
        download(ENTRY, tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert download(ENTRY, tmp_path, base_url=server.url, progress=False).read_bytes() == PAYLOAD


def test_wrong_length_is_refused_before_writing(server: FileServer, tmp_path: Path) -> None:
    server.payload = b"<html>Not found</html>"
    with pytest.raises(CheckpointError, match="sends 22 bytes"):
        download(ENTRY, tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_present_verified_file_is_reused_without_network(
    server: FileServer, tmp_path: Path
) -> None:
    (tmp_path / ENTRY.file_name).write_bytes(PAYLOAD)
    dead = f"http://127.0.0.1:{_closed_port()}"
    assert download(ENTRY, tmp_path, base_url=dead, progress=False).read_bytes() == PAYLOAD
    assert server.requests == []


def test_present_wrong_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / ENTRY.file_name).write_bytes(PAYLOAD[::-1])
    assert download(ENTRY, tmp_path, base_url=server.url, progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def _assert_hand_placement(message: str, dest_dir: Path, url: str) -> None:
    for needed in (
        ENTRY.file_name,
        str(dest_dir / ENTRY.file_name),
        str(ENTRY.bytes),
        ENTRY.sha256,
        url,
    ):
        assert needed in message


def test_unreachable_host_fails_fast_with_instructions(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="could not download") as info:
        download(ENTRY, tmp_path, base_url=base, progress=False)
    assert time.monotonic() - started < 5
    _assert_hand_placement(str(info.value), tmp_path, f"{base}/Fake_mAP%3D0.123.pth")


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="timed out"):
            download(ENTRY, tmp_path, base_url=base, timeout=0.5, progress=False)
        assert time.monotonic() - started < 5


def test_environment_overrides_base_url(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, server.url + "/{name}?download=1")
    assert download(ENTRY, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("/files/Fake_mAP%3D0.123.pth?download=1", None)]


def test_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    zenodo = "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1"
    assert OFFICIAL["Cnn14"].url == zenodo
    assert checkpoint_url(OFFICIAL["Cnn14"]) == zenodo
    assert checkpoint_url(OFFICIAL["Cnn6"], "http://m/x/") == "http://m/x/Cnn6_mAP%3D0.343.pth"


def test_verify(tmp_path: Path) -> None:
    path = tmp_path / "f.pth"
    assert verify(path, ENTRY) == "missing"
    path.write_bytes(PAYLOAD[:10])
    assert "size 10 bytes" in str(verify(path, ENTRY))
    path.write_bytes(PAYLOAD[::-1])
    assert "SHA-256" in str(verify(path, ENTRY))
    path.write_bytes(PAYLOAD)
    assert verify(path, ENTRY) is None


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.checkpoints", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_cli_download_without_network(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    result = _cli("download", "Cnn6", "--dir", str(tmp_path), "--url", base)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    entry = OFFICIAL["Cnn6"]
    for needed in (
        str(tmp_path / entry.file_name),
        entry.sha256,
        str(entry.bytes),
        f"{base}/Cnn6_mAP%3D0.343.pth",
    ):
        assert needed in result.stderr


@pytest.mark.slow
def test_cli_download_rejects_a_wrong_file(server: FileServer, tmp_path: Path) -> None:
    server.payload = b"wrong" * 10
    result = _cli(
        "download", "cnn6_mAP=0.343.pth", "--dir", str(tmp_path), env={BASE_URL_ENV: server.url}
    )
    assert result.returncode == 1, result.stderr
    assert "sends 50 bytes" in result.stderr and "Traceback" not in result.stderr
    assert server.requests == [("/files/Cnn6_mAP%3D0.343.pth", None)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_list(tmp_path: Path) -> None:
    (tmp_path / OFFICIAL["Cnn6"].file_name).write_bytes(b"not it")
    (tmp_path / (OFFICIAL["LeeNet11"].file_name + ".part")).write_bytes(b"x" * 1_506_186)
    result = _cli("list", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert list(rows) == list(OFFICIAL)
    assert "BAD: size 6 bytes" in rows["Cnn6"]
    assert "partial (50%)" in rows["LeeNet11"]
    assert rows["Cnn14_16k"].split()[1:5] == ["Cnn14_16k_mAP=0.438.pth", "0.438", "358.7", "16000"]
    assert rows["Cnn14"].endswith("missing")
