"""``MultipartReader``: the chunks it hands straight to a part change nothing. For random
bodies (data full of CRs, delimiter prefixes and look-alikes, several parts, broken endings)
cut at random places, it returns the same parts, or the same error, as python-multipart fed
every chunk."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.errors import ApiError
from service.upload import HEAD_BYTES, MultipartReader

Outcome = tuple[object, ...]


def _read(boundary: bytes, chunks: list[bytes], fast: bool) -> tuple[Outcome, int]:
    reader = MultipartReader(boundary, max_files=8, fast=fast)
    try:
        for chunk in chunks:
            reader.feed(chunk)
        body = reader.finish()
    except ApiError as exc:
        return ("error", exc.status, exc.code), reader.direct
    files = [(p.name, p.filename, bytes(p.data)) for p in body.files]
    return ("ok", files, body.fields), reader.direct


def _data(rng: np.random.Generator, boundary: bytes, size: int) -> bytes:
    """Audio-like bytes with what could confuse a delimiter search planted in them."""
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    lures = [b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"--" + boundary, b"\r\n--" + boundary[:-1]]
    for _ in range(int(rng.integers(0, 12))):
        lure = lures[int(rng.integers(len(lures)))]
        at = int(rng.integers(0, max(1, size - len(lure))))
        data[at : at + len(lure)] = lure
    return bytes(data[:size])


def _body(rng: np.random.Generator, boundary: bytes) -> bytes:
    parts = []
    for index in range(int(rng.integers(1, 4))):
        data = _data(rng, boundary, int(rng.integers(0, 300_000)))
        head = f'Content-Disposition: form-data; name="file"; filename="f{index}.wav"'
        parts.append(head.encode() + b"\r\nContent-Type: audio/wav\r\n\r\n" + data)
    if rng.random() < 0.5:
        parts.insert(0, b'Content-Disposition: form-data; name="model"\r\n\r\ncnn14')
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary + b"--\r\n"
    if rng.random() < 0.15:  # truncated, or garbage where a delimiter should be
        body = body[: int(rng.integers(1, len(body)))]
    elif rng.random() < 0.1:
        cut = int(rng.integers(1, len(body)))
        body = body[:cut] + b"\r\n--" + boundary + b"X\r\n" + body[cut:]
    return body


def _cut(rng: np.random.Generator, body: bytes, boundary: bytes) -> list[bytes]:
    """Chunks of random sizes, some ending inside a delimiter."""
    cuts = set(rng.integers(0, len(body), int(rng.integers(0, 12))).tolist())
    at = body.find(b"\r\n--" + boundary)
    while at != -1:
        cuts.add(at + int(rng.integers(0, len(boundary) + 4)))
        cuts.add(at + len(boundary) + 3)  # the chunk ends one byte short of the delimiter
        at = body.find(b"\r\n--" + boundary, at + 1)
    edges = [0, *sorted(c for c in cuts if 0 < c < len(body)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


SEEDS = range(150)


def _case(seed: int) -> tuple[Outcome, Outcome, int, int]:
    """A random body read both ways: (parser only, with direct pieces, how many chunks gave
    the part a piece directly, how many chunks)."""
    rng = np.random.default_rng(seed)
    token = "".join(rng.choice(list("0123456789abcdefXYZ'()+_,-./:=?"), int(rng.integers(1, 60))))
    boundary = b"----b" + token.encode()
    body = _body(rng, boundary)
    chunks = _cut(rng, body, boundary)
    expected, _ = _read(boundary, chunks, fast=False)
    got, direct = _read(boundary, chunks, fast=True)
    return expected, got, direct, len(chunks)


@pytest.mark.parametrize("seed", SEEDS)
def test_direct_chunks_give_what_the_parser_gives(seed: int) -> None:
    expected, got, _, _ = _case(seed)
    assert got == expected


def test_the_random_bodies_cover_both_paths_and_both_outcomes() -> None:
    """Some bodies fail, some are read; many chunks give their part a piece directly, some
    go to the parser whole."""
    cases = [_case(seed) for seed in SEEDS]
    assert {str(expected[0]) for expected, _, _, _ in cases} == {"ok", "error"}
    assert sum(direct for _, _, direct, _ in cases) > 300
    assert any(direct < chunks for _, _, direct, chunks in cases)


BOUNDARY = b"panns-test-boundary"
HEAD = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'


def _one_file(audio: bytes) -> bytes:
    """A body with one part, file "a", holding ``audio``."""
    return HEAD + audio + b"\r\n--" + BOUNDARY + b"--\r\n"


def _in_64k(body: bytes) -> list[bytes]:
    return [body[i : i + 65536] for i in range(0, len(body), 65536)]


def test_clean_audio_chunks_go_straight_to_the_part() -> None:
    """Every chunk gives the part its audio directly: the first after the headers, the last
    up to the closing delimiter."""
    audio = bytes(range(256)) * 3000
    chunks = _in_64k(_one_file(audio))
    outcome, direct = _read(BOUNDARY, chunks, fast=True)
    assert outcome == ("ok", [("file", "a", audio)], {})
    assert direct == len(chunks)


def test_chunks_other_than_bytes_go_to_the_parser_whole() -> None:
    """Only ``bytes`` chunks (what uvicorn hands on) are searched with ``memmem``; any other
    buffer is the parser's alone, with the same parts."""
    audio = bytes(range(256)) * 1000
    reader = MultipartReader(BOUNDARY, max_files=8)
    for chunk in _in_64k(_one_file(audio)):
        reader.feed(bytearray(chunk))  # type: ignore[arg-type]
    assert reader.direct == 0
    assert bytes(reader.finish().files[0].data) == audio


@pytest.mark.parametrize("held", [1, 4, 12])
def test_a_delimiter_half_matched_where_the_headers_piece_ends_stays_in_order(held: int) -> None:
    """The first chunk's 16 KB for the parser (the headers) ends in what could start a
    delimiter: the parser holds those bytes back, so none of what follows may reach the part
    before them."""
    lure = (b"\r\n--" + BOUNDARY)[:held]
    audio = bytes(range(32, 128)) * 400
    audio = audio[: HEAD_BYTES - len(HEAD) - held] + lure + audio[:20_000]
    body = _one_file(audio)
    chunks = [body[:30_000], body[30_000:]]  # the second: audio, then the closing delimiter
    assert _read(BOUNDARY, chunks, fast=True) == (_read(BOUNDARY, chunks, fast=False)[0], 1)
    assert _read(BOUNDARY, chunks, fast=True)[0] == ("ok", [("file", "a", audio)], {})
