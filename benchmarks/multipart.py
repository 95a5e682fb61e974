"""Reading a multipart upload: python-multipart fed every chunk vs ``MultipartReader``.

``MultipartReader`` (``service/upload.py``) hands the audio between a part's headers and its
closing delimiter straight to the part once libc's ``memmem`` has found the chunk's next
delimiter (or none); python-multipart alone searches every byte with ``bytes.find``. This
runs both side by side in one run, alternating, on the benchmark's own 10 s 32 kHz WAV
upload (``benchmarks/formats.py``) cut into fresh ``bytes`` chunks the way uvicorn hands
them to the app: a fixed ``--chunk-kb`` or the sizes seen in a real server (``mixed``).
Prints JSON: microseconds per upload (median and minimum over ``--repeats``) of feeding the
chunks (the parts' final join, the same both ways, excluded).

    .venv/bin/python benchmarks/multipart.py --repeats 400 --json multipart.json
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, machine
from benchmarks.formats import BOUNDARY, FORMATS, multipart_body, payloads
from service.upload import MultipartReader

# Chunk sizes (KB) a one-process service's app received for this upload (a probe around
# ``MultipartReader.feed`` over 2,500 chunks): anything from a few KB to uvicorn's 256 KB.
MIXED_KB = (60, 120, 240, 205)


def _upload() -> tuple[bytes, bytes]:
    """The multipart body of the benchmark's 10 s WAV request, and its boundary."""
    fmt = FORMATS["wav32k"]
    return multipart_body(payloads(fmt, 32000, 10.0, 1)[0], "clip.wav"), BOUNDARY.encode()


def _cuts(size: int, chunk: str) -> list[int]:
    kbs = MIXED_KB if chunk == "mixed" else (int(chunk),)
    edges, at, n = [0], 0, 0
    while at < size:
        at = min(size, at + kbs[n % len(kbs)] * 1024)
        edges.append(at)
        n += 1
    return edges


def _feed(body: bytes, boundary: bytes, edges: list[int], direct: bool) -> float:
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)]  # fresh objects
    reader = MultipartReader(boundary, max_files=8, fast=direct)
    start = time.perf_counter()
    for chunk in chunks:
        reader.feed(chunk)
    took = time.perf_counter() - start
    assert reader.finish().files[0].size > 0
    return took


def _compare(body: bytes, boundary: bytes, chunk: str, repeats: int) -> dict[str, Any]:
    edges = _cuts(len(body), chunk)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for direct in (False, True):
            times[direct].append(1e6 * _feed(body, boundary, edges, direct))
    alone, reader = times[False], times[True]
    return {
        "chunks": len(edges) - 1,
        "parser_alone_us": {
            "median": round(statistics.median(alone), 1),
            "min": round(min(alone), 1),
        },
        "reader_us": {"median": round(statistics.median(reader), 1), "min": round(min(reader), 1)},
        "reader_vs_parser_median": round(statistics.median(reader) / statistics.median(alone), 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=300, help="uploads fed per way and chunking")
    p.add_argument("--chunks", default="64,256,mixed", help="chunk sizes in KB, or mixed")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    body, boundary = _upload()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "upload_bytes": len(body),
        "memmem": MultipartReader(boundary, 1).fast,
        "by_chunking": {
            c: _compare(body, boundary, c, args.repeats) for c in args.chunks.split(",")
        },
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
