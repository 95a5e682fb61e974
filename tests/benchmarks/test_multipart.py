"""The multipart benchmark runs both ways on every chunking and reports them (no timing
asserted): the upload's audio really went to its part directly, and the same bytes came out."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from benchmarks import multipart


def test_both_ways_are_measured_and_written(tmp_path: Path) -> None:
    out = tmp_path / "multipart.json"
    result = multipart.main(["--repeats", "3", "--chunks", "64,mixed", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["memmem"] is True and result["upload_bytes"] > 600_000
    for chunking in ("64", "mixed"):
        figures = result["by_chunking"][chunking]
        assert figures["chunks"] > 1 and figures["reader_vs_parser_median"] > 0
        for way in ("parser_alone_us", "reader_us"):
            assert 0 < figures[way]["min"] <= figures[way]["median"]


def test_the_reader_hands_the_audio_on_directly_and_keeps_it_whole() -> None:
    body, boundary = multipart._upload()
    edges = multipart._cuts(len(body), "64")
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)]
    parts = []
    for direct in (False, True):
        reader = multipart.MultipartReader(boundary, max_files=8, fast=direct)
        for chunk in chunks:
            reader.feed(chunk)
        parts.append(bytes(reader.finish().files[0].data))
        assert (reader.direct == len(chunks)) is direct
    assert parts[0] == parts[1] and len(parts[0]) > 600_000
