"""The `panns` command against a real server (``--url``) and in-process (``--bundle``)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.cli import main
from service.cli.tag import expand
from tests.conftest import REPO_ROOT, shared_path
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    free_socket,
    metric_total,
    noise,
    parse_metrics,
    settings_for,
)

KEY = "cli-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUDIO = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    live = LiveServer(settings_for(tagger_bundle, api_keys=KEY)).start()
    yield live
    live.stop()


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PANNS_THREADS": "1", "OMP_NUM_THREADS": "1", **extra}


@contextlib.contextmanager
def spawn(args: list[str], **env: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m service.cli ARGS`` (killed if the test fails before it ends)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=cli_env(**env),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_path(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {r["path"]: r for r in records}
    assert len(out) == len(records), "a file has two lines"
    return out


def tag_requests(live: LiveServer, status: str | None = None) -> float:
    text = httpx.get(f"{live.url}/metrics").text
    labels = {"endpoint": "/v1/tag", **({"status": status} if status else {})}
    return metric_total(parse_metrics(text), "panns_requests_total", **labels)


def noise_files(folder: Path, count: int, seconds: float = 1.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"noise{i:03d}.wav" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(encode(noise(seconds, seed=100 + i), RATE))
    return paths


def test_url_and_bundle_give_the_rest_results_on_real_recordings(
    tagger_bundle: Path, server: LiveServer, tmp_path: Path
) -> None:
    folder = shared_path("audio")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO)
    url_out, local_out = tmp_path / "url.jsonl", tmp_path / "local.jsonl"
    command = [
        "tag",
        str(folder),
        "--bundle",
        str(tagger_bundle),
        "--out",
        str(local_out),
        "--concurrency",
        "4",
    ]
    with spawn(command, PANNS_MAX_BATCH="8") as local:  # loads while the REST calls run
        rest = {}
        with server.client(headers=AUTH) as client:
            for path in paths:
                answer = client.post("/v1/tag", files={"file": (path.name, path.read_bytes())})
                assert answer.status_code == 200, answer.text
                rest[str(path)] = answer.json()["results"][0]
        assert (
            main(
                [
                    "tag",
                    str(folder),
                    "--url",
                    server.url,
                    "--api-key",
                    KEY,
                    "--out",
                    str(url_out),
                    "-q",
                ]
            )
            == 0
        )
        _, stderr = local.communicate(timeout=300)
    assert local.returncode == 0, stderr
    assert f"{len(paths)} ok, 0 failed" in stderr
    for out in (url_out, local_out):
        records = by_path(read_jsonl(out))
        assert set(records) == set(rest)
        for path, want in rest.items():
            got = records[path]
            assert set(got) == {"path", *want}
            assert got["filename"] == want["filename"] and got["error"] is None
            assert got["duration_s"] == pytest.approx(want["duration_s"])
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
            assert [t["index"] for t in got["top"]] == [t["index"] for t in want["top"]]
            assert (got["windows"] is None) == (want["windows"] is None)


def test_a_bad_file_gets_an_error_line_and_resume_redoes_only_what_is_missing(
    server: LiveServer, tmp_path: Path
) -> None:
    good = noise_files(tmp_path / "in", 4) + noise_files(tmp_path / "in" / "sub", 1)
    broken = tmp_path / "in" / "broken.wav"
    broken.write_bytes(b"RIFF but not really a wav file" * 10)
    (tmp_path / "in" / "notes.txt").write_text("not audio: not picked from a folder")
    out = tmp_path / "tags.jsonl"
    args = [
        "tag",
        str(tmp_path / "in"),
        "-r",
        "--url",
        server.url,
        "--api-key",
        KEY,
        "--out",
        str(out),
        "-q",
        "--no-scores",
    ]
    assert main(args) == 1  # one file failed
    records = by_path(read_jsonl(out))
    assert set(records) == {str(p) for p in [*good, broken]}
    assert records[str(broken)]["error"]["code"] == "undecodable_audio"
    assert all(records[str(p)]["error"] is None for p in good)
    assert main(args) == 2  # the output exists: neither --resume nor --overwrite
    # Lose one finished line, and leave an unfinished one as a killed run would.
    lines = out.read_text().splitlines()
    dropped = next(i for i, line in enumerate(lines) if str(good[2]) in line)
    kept = [line for i, line in enumerate(lines) if i != dropped]
    out.write_text("\n".join(kept) + '\n{"path": "' + str(good[0])[:5])
    before = tag_requests(server)
    assert main([*args, "--resume"]) == 1
    assert tag_requests(server) - before == 2  # the dropped file and the broken one
    final = out.read_text().splitlines()
    assert len(final) == 6 and set(by_path([json.loads(x) for x in final])) == set(records)
    assert [x for x in kept if str(broken) not in x] == final[:4]  # results kept verbatim


def test_csv_output_has_the_top_labels(server: LiveServer, tmp_path: Path) -> None:
    files = noise_files(tmp_path / "in", 3)
    out = tmp_path / "tags.csv"
    base = ["tag", *map(str, files), "--url", server.url, "--api-key", KEY, "-q", "--top-k", "3"]
    assert main([*base, "--out", str(out)]) == 0
    assert main([*base, "--out", str(tmp_path / "tags.jsonl")]) == 0
    want = by_path(read_jsonl(tmp_path / "tags.jsonl"))
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path",
        "duration_s",
        "error",
        "label_1",
        "score_1",
        "label_2",
        "score_2",
        "label_3",
        "score_3",
    ]
    assert {r["path"] for r in rows} == set(want)
    for row in rows:
        top = want[row["path"]]["top"]
        assert [row[f"label_{i}"] for i in (1, 2, 3)] == [t["label"] for t in top]
        assert [float(row[f"score_{i}"]) for i in (1, 2, 3)] == [t["score"] for t in top]
        assert row["error"] == "" and float(row["duration_s"]) == pytest.approx(1.0)


def test_an_overloaded_server_answering_503_loses_no_file(
    tagger_bundle: Path, tmp_path: Path
) -> None:
    files = noise_files(tmp_path / "in", 12)
    live = LiveServer(settings_for(tagger_bundle, max_queue=1, max_batch=1)).start()
    try:
        out = tmp_path / "tags.jsonl"
        code = main(
            [
                "tag",
                str(tmp_path / "in"),
                "--url",
                live.url,
                "--out",
                str(out),
                "-q",
                "--concurrency",
                "12",
                "--no-scores",
            ]
        )
        refused = tag_requests(live, "503")
    finally:
        live.stop()
    assert code == 0
    records = by_path(read_jsonl(out))
    assert set(records) == {str(p) for p in files}
    assert all(r["error"] is None for r in records.values())
    assert refused > 0  # the queue did overflow, and every refused file was sent again


def test_ctrl_c_stops_cleanly_and_resume_finishes(server: LiveServer, tmp_path: Path) -> None:
    files = noise_files(tmp_path / "in", 40)
    out = tmp_path / "tags.jsonl"
    args = [
        "tag",
        str(tmp_path / "in"),
        "--url",
        server.url,
        "--out",
        str(out),
        "--concurrency",
        "1",
        "--no-scores",
    ]
    with spawn(args, PANNS_API_KEY=KEY) as proc:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "no line was written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    text = out.read_text()
    assert text.endswith("\n")
    first = by_path([json.loads(line) for line in text.splitlines()])
    assert 2 <= len(first) < len(files)
    assert main([*args, "--resume", "--api-key", KEY, "-q"]) == 0
    assert set(by_path(read_jsonl(out))) == {str(p) for p in files}


def test_what_no_file_could_survive_stops_the_run(
    tagger_bundle: Path, server: LiveServer, tmp_path: Path
) -> None:
    wav = noise_files(tmp_path / "in", 1)[0]
    out = tmp_path / "tags.jsonl"
    remote = ["tag", str(wav), "--url", server.url, "--out", str(out), "-q"]
    assert main([*remote, "--api-key", "wrong"]) == 2
    assert main([*remote, "--api-key", KEY, "--model", "nope"]) == 2
    with free_socket() as sock:  # bound, not listening: connections are refused
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert main(["tag", str(wav), "--url", closed, "--retries", "0", "-q"]) == 2
    assert not out.exists() or out.read_text() == ""
    local = ["tag", str(wav), "--bundle", str(tagger_bundle), "-q", "--out", str(out)]
    assert main([*local, "--hop-s", "0.001"]) == 2  # below PANNS_MIN_HOP_S
    assert main([*local, "--resume"]) == 0 and len(read_jsonl(out)) == 1


def test_folders_expand_to_audio_files_in_a_stable_order(tmp_path: Path) -> None:
    for name in [
        "b.WAV",
        "a.flac",
        "c.txt",
        ".hidden.wav",
        "z/y.mp3",
        "z/x.opus",
        ".git/k.wav",
        "m/n/o.oga",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    flat = [p.relative_to(tmp_path).as_posix() for p in expand([tmp_path], False)]
    assert flat == ["a.flac", "b.WAV"]
    deep = expand([tmp_path, tmp_path / "a.flac", tmp_path / "c.txt"], True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == [
        "a.flac",
        "b.WAV",
        "m/n/o.oga",
        "z/x.opus",
        "z/y.mp3",
        "c.txt",
    ]


def test_models_lists_served_and_bundled_models(
    tagger_bundle: Path, server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--url", server.url, "--api-key", KEY, "--json"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in served] == ["mobilenetv1"] and served[0]["default"]
    assert main(["models", "--bundle", str(tagger_bundle)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "arch", "classes"]
    assert table[1].split()[:3] == ["mobilenetv1", "MobileNetV1", "527"]


@contextlib.contextmanager
def _not_the_service() -> Iterator[str]:
    """A real HTTP server that answers every request 200 with an HTML page."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b"<html>a proxy's page</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_200_that_is_not_the_service_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    files = noise_files(tmp_path / "in", 1)
    out = tmp_path / "tags.jsonl"
    with _not_the_service() as url:
        assert main(["tag", str(files[0]), "--url", url, "--out", str(out), "-q"]) == 1
        assert main(["models", "--url", url]) == 2
    (line,) = read_jsonl(out)
    assert line["error"]["code"] == "bad_response" and "text/html" in line["error"]["message"]
