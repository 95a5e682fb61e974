"""The bad-input suite over HTTP: every case gets a clear 4xx and the service keeps serving."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.audiocheck import MAX_ABS_SAMPLE
from tests.service.audio_files import adts_aac, streamed_wav, unknown_length_flac, with_byte
from tests.service.conftest import (
    RATE,
    LiveServer,
    encode,
    files,
    noise,
    settings_for,
    sine,
)


def _wav_header(channels: int, rate: int, data_bytes: int) -> bytes:
    align = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


GOOD = encode(sine(440, 2.0, RATE), RATE, "WAV", "PCM_16")
NAN = sine(440, 1.0, RATE)
NAN[10] = np.nan
INF = sine(440, 1.0, RATE)
INF[-1] = np.inf
HUGE = sine(440, 1.0, RATE)
HUGE[100] = 1e30  # finite, but overflows the model's power spectrum: null scores before
DAMAGED_FLOAT_WAV = with_byte(encode(noise(0.5, 3, 44100), 44100, "WAV", "FLOAT"), 34, 0)
DAMAGED_FLAC = with_byte(encode(noise(0.5, 3, 44100), 44100, "FLAC", "PCM_16"), 6, 1)
# What libsndfile says about its own internals ("Internal psf_fseek() failed", ...).
LEAKS = ("internal", "psf_", "sf_", "error :", "unspecified", "bytesio", "traceback")

CASES = [
    ("random bytes", np.random.default_rng(1).bytes(20000), 400, "MP3"),  # starts 0xFFE4
    ("random text", b"hello, this is not audio" * 100, 415, "unrecognised audio format"),
    ("empty file", b"", 400, "empty"),
    ("truncated WAV", GOOD[: len(GOOD) // 3], 400, "truncated"),
    ("header only", GOOD[:44], 400, "truncated"),
    ("lying header: hours", _wav_header(1, RATE, 2 * RATE * 3600 * 5) + bytes(4000), 413, "claims"),
    ("zero channels", _wav_header(0, RATE, 1000) + bytes(1000), 400, "0 channels"),
    ("huge sample rate", _wav_header(1, 2_000_000_000, 1000) + bytes(1000), 400, "sample rate"),
    ("NaN samples", encode(NAN, RATE), 400, "NaN"),
    ("inf samples", encode(INF, RATE), 400, "infinite"),
    ("AIFF", encode(sine(440, 1.0, RATE), RATE, "AIFF", "PCM_16"), 415, "AIFF"),
    ("corrupt FLAC", b"fLaC" + np.random.default_rng(2).bytes(3000), 400, "FLAC"),
    ("too long", encode(np.zeros(RATE * 140, np.float32), RATE, "FLAC", "PCM_16"), 413, "limit"),
    (
        "too long, FLAC of unknown length",
        unknown_length_flac(np.zeros(RATE * 140), RATE),
        413,
        "longer than the limit of 130 s",
    ),
    ("float samples of 1e30", encode(HUGE, RATE), 400, "must lie within"),
    ("AAC (ADTS)", adts_aac(), 415, "AAC (ADTS) audio is not supported"),
    ("damaged float WAV", DAMAGED_FLOAT_WAV, 400, "corrupt"),
    ("damaged FLAC header", DAMAGED_FLAC, 400, "corrupt"),
]


@pytest.fixture(scope="module")
def server(tagger_bundle: Path) -> Iterator[LiveServer]:
    srv = LiveServer(settings_for(tagger_bundle, max_upload_mb=2)).start()
    yield srv
    srv.stop()


def assert_still_serving(client: httpx.Client) -> None:
    r = client.post("/v1/tag", files=files(("ok.wav", GOOD)))
    assert r.status_code == 200 and len(r.json()["results"][0]["scores"]) == 527


@pytest.mark.parametrize(("what", "data", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_audio_gets_a_clear_4xx(
    server: LiveServer, what: str, data: bytes, status: int, words: str
) -> None:
    with server.client() as c:
        r = c.post("/v1/tag", files=files((what, data)))
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert words in error["message"] and error["code"]
        assert not any(leak in r.text.lower() for leak in LEAKS), r.text
        assert_still_serving(c)


def test_streamed_files_without_a_length_are_served(server: LiveServer) -> None:
    """A WAV with data size 0 got empty_audio; a FLAC with total_samples 0 got 413."""
    x = sine(440, 3.0, RATE)
    with server.client() as c:
        r = c.post(
            "/v1/tag",
            files=files(
                ("stream.wav", streamed_wav(x[:RATE], RATE)),
                ("pipe.flac", unknown_length_flac(x, RATE)),
            ),
        )
    assert r.status_code == 200, r.text
    wav, flac = r.json()["results"]
    assert wav["error"] is None and wav["duration_s"] == pytest.approx(1.0)
    assert flac["error"] is None and flac["duration_s"] == pytest.approx(3.0)


def test_samples_at_the_bound_get_finite_scores(server: LiveServer) -> None:
    """The loudest float audio accepted still gives numbers, not nulls."""
    square = np.sign(sine(1000, 2.0, RATE)) * np.float32(MAX_ABS_SAMPLE)
    with server.client() as c:
        r = c.post("/v1/tag", files=files(("loud.wav", encode(square, RATE))))
    assert r.status_code == 200, r.text
    scores = r.json()["results"][0]["scores"]
    assert len(scores) == 527 and all(isinstance(v, float) for v in scores)


def test_a_multipart_boundary_longer_than_the_parser_takes_is_a_400(server: LiveServer) -> None:
    """python-multipart raises from its constructor for > 256 characters: that was a 500."""
    boundary = "b" * 300
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + GOOD
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with server.client() as c:
        r = c.post(
            "/v1/tag",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_multipart" and "boundary is 300 characters" in error["message"]
        assert_still_serving(c)


def test_too_short_without_padding(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/tag",
            params={"pad": "false"},
            files=files(("tiny.wav", encode(noise(0.05, 1), RATE))),
        )
    assert r.status_code == 400 and r.json()["error"]["code"] == "audio_too_short"
    assert "at least" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"top_k": 0}, "top_k"),
        ({"aggregate": "median"}, "aggregate"),
        ({"pad": "maybe"}, "pad"),
        ({"window_s": -1}, "window_s"),
        ({"window_s": 0.01}, "window_s"),
        ({"hop_s": 0}, "hop_s"),
        ({"threshold": 2}, "threshold"),
    ],
)
def test_bad_parameters_are_422(
    server: LiveServer, params: dict[str, str | int], field: str
) -> None:
    with server.client() as c:
        r = c.post("/v1/tag", params=params, files=files(("a.wav", GOOD)))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "params", "fields"),
    [
        ("/v1/tag", {"dtype": "int8", "sample_rate": 16000}, ["dtype"]),
        ("/v1/tag", {"sample_rate": 10}, ["sample_rate"]),
        ("/v1/tag", {"channels": 0, "top_k": "many"}, ["channels", "top_k"]),
        ("/v1/tag", {"model": "m" * 201}, ["model"]),
        ("/v1/embed", {"window_s": -1, "hop_s": "x"}, ["window_s", "hop_s"]),
        ("/v1/detect", {"threshold": 2, "min_duration_s": -1}, ["threshold", "min_duration_s"]),
    ],
)
def test_every_bad_parameter_of_every_upload_route_is_named_in_one_422(
    server: LiveServer, path: str, params: dict[str, str | int], fields: list[str]
) -> None:
    """The query string is validated at once (``service.queries``): every bad value is named,
    before the body is read; an unknown parameter is ignored, as it always was."""
    with server.client() as c:
        r = c.post(path, params={**params, "unknown": "1"}, files=files(("a.wav", GOOD)))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_parameters"
    assert all(f"{field}:" in error["message"] for field in fields), error["message"]


def test_query_values_arrive_typed_and_the_last_repeat_wins(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/tag?top_k=7&top_k=3&scores=false&pad=0&unknown=x",
            files=files(("a.wav", GOOD)),
        )
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert len(result["top"]) == 3 and result["scores"] is None


def test_long_overlapping_windows_are_413_not_a_gigabyte(server: LiveServer) -> None:
    """60 s windows every 0.25 s over a 70 s clip: 41 windows (within the count of 128) that
    hold 315 MB of float32, and as much to hand to the engine, from a small upload: 2460 s of
    windows against 1280 s (128 of the model's 10 s). Refused before any window is made."""
    clip = encode(np.zeros(RATE * 70, np.float32), RATE, "FLAC", "PCM_16")
    with server.client() as c:
        r = c.post("/v1/tag", params={"window_s": 60, "hop_s": 0.25}, files=files(("a.flac", clip)))
        assert_still_serving(c)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    assert "2460 s of audio" in r.json()["error"]["message"]


def test_wrong_field_names_and_bodies(server: LiveServer) -> None:
    with server.client() as c:
        wrong = c.post("/v1/tag", files=[("audio", ("a.wav", GOOD))])
        form = c.post("/v1/tag", data={"file": "not a file"})
        raw = c.post("/v1/tag", content=GOOD, headers={"Content-Type": "text/plain"})
        nothing = c.post("/v1/tag")
        unknown = c.post("/v1/tag", params={"model": "Cnn99"}, files=files(("a.wav", GOOD)))
    assert wrong.status_code == 422 and "'file'" in wrong.json()["error"]["message"]
    assert "audio" in wrong.json()["error"]["message"]
    assert form.status_code == 415  # a form without a file part is not multipart/form-data
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["error"]["message"]
    assert nothing.status_code == 415
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    with server.client() as c:
        cut = c.post("/v1/tag", content=part + GOOD[:5000], headers=multipart)
        junk = c.post("/v1/tag", content=b"\x00" * 300, headers=multipart)
        big_header = c.post(
            "/v1/tag",
            content=part.replace(b"a.wav", b"a" * 9000) + GOOD + b"\r\n--xyz--\r\n",
            headers=multipart,
        )
    assert cut.status_code == 400 and "closing boundary" in cut.json()["error"]["message"]
    assert junk.status_code == 400 and junk.json()["error"]["code"] == "bad_multipart"
    assert big_header.status_code == 400 and "header" in big_header.json()["error"]["message"]
    assert unknown.status_code == 404 and "Cnn99" in unknown.json()["error"]["message"]


def test_oversized_body_with_content_length_is_refused_at_once(server: LiveServer) -> None:
    big = bytes(3 * 1024 * 1024)
    with server.client() as c:
        r = c.post("/v1/tag", files=files(("big.wav", big)))
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]
        assert_still_serving(c)


def test_endless_chunked_body_is_cut_off_while_reading(server: LiveServer) -> None:
    """A chunked upload that never ends gets 413 after ~the limit, not after the end."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    sock.sendall(head)
    first = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
    chunk = bytes(64 * 1024)
    sent, reply, deadline = 0, b"", time.monotonic() + 60
    sock.setblocking(False)
    while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            time.sleep(0.01)
        with contextlib.suppress(BlockingIOError):
            reply += sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 20 * 1024 * 1024  # stopped long before the client would have
    with server.client() as c:
        assert_still_serving(c)


def test_total_audio_per_request_is_limited(tagger_bundle: Path) -> None:
    server = LiveServer(settings_for(tagger_bundle, max_request_audio_s=5)).start()
    clip = encode(noise(3.0, 2), RATE, "FLAC", "PCM_16")
    try:
        with server.client() as c:
            r = c.post("/v1/tag", files=files(("a.flac", clip), ("b.flac", clip)))
    finally:
        server.stop()
    first, second = r.json()["results"]
    assert r.status_code == 200 and first["error"] is None
    assert second["error"]["code"] == "audio_too_long" and "in total" in second["error"]["message"]


def test_each_bad_file_says_what_was_wrong_with_it(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/v1/tag", files=files(("a.bin", b"\x00" * 100), ("b.wav", b"")))
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert [f["filename"] for f in err["files"]] == ["a.bin", "b.wav"]
    assert [f["code"] for f in err["files"]] == ["unsupported_format", "empty_audio"]
    assert "a.bin" in err["message"] and "b.wav" in err["message"]


def test_detect_parameters_are_bounded_by_the_model(tagger_bundle: Path, sed_bundle: Path) -> None:
    from service.core.card import read_card

    sed = read_card(sed_bundle).name
    server = LiveServer(settings_for(tagger_bundle, sed_bundle, max_response_values=1000)).start()
    clip = encode(noise(20.0, seed=3), RATE)
    try:
        with server.client() as c:
            tiny = c.post(
                "/v1/detect",
                params={"model": sed, "frames_per_second": 1e-7},
                files=files(("a.wav", clip)),
            )
            denormal = c.post(
                "/v1/detect",
                params={"model": sed, "frames_per_second": 5e-324},
                files=files(("a.wav", clip)),
            )
            everything = c.post(
                "/v1/detect",
                params={"model": sed, "top_k": 1000, "threshold": 0, "min_duration_s": 0},
                files=files(("a.wav", clip)),
            )
            assert_still_serving(c)
    finally:
        server.stop()
    assert tiny.status_code == 422 and "frames_per_second" in tiny.text
    assert denormal.status_code == 422 and "frames_per_second" in denormal.text
    assert everything.status_code == 413, everything.text
    assert everything.json()["error"]["code"] == "request_too_large"
