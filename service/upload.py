"""Read a request body with hard limits: bytes (413 while reading), time (408), files.

Three shapes are accepted: ``multipart/form-data`` with parts named ``file`` (and small text
fields such as ``model``), a single encoded file as the raw body (``Content-Type: audio/*``),
and raw PCM (``application/octet-stream``, described by query parameters at the route).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from service.errors import ApiError
from service.settings import Settings

FIELD = "file"
# python-multipart refuses longer boundaries (RFC 2046 allows 70 characters).
MAX_BOUNDARY = 256
MAX_FIELD_BYTES = 1024  # a text field (model=...) longer than this is refused
JOIN_BYTES = 8 << 20  # a part's chunks up to this size are joined once, at the end
HEAD_BYTES = 16 << 10  # of a chunk that starts a part, what the parser reads first


@dataclass
class Part:
    """One uploaded file or form field.

    Up to ``JOIN_BYTES`` the network chunks are kept as they came and joined once at the end:
    one copy. A bytearray grown by ``+=`` is reallocated every 1/8 of its size, and each
    reallocation may copy it whole (several copies of every upload, on the event loop).
    Past ``JOIN_BYTES`` the chunks are joined and the rest grows in place, so a large upload
    is not held twice (as chunks and joined)."""

    name: str = ""
    filename: str = ""
    buffer: bytearray = field(default_factory=bytearray)
    pieces: list[bytes | memoryview] | None = field(default_factory=list)
    size: int = 0

    def append(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.pieces is None:
            self.buffer += data
            return
        self.pieces.append(data)
        if self.size > JOIN_BYTES:
            self._join()

    def _join(self) -> None:
        if self.pieces is not None:
            self.buffer = bytearray().join(self.pieces)
            self.pieces = None

    @property
    def data(self) -> bytearray:
        """The body itself, not a copy (use ``take`` to let it go)."""
        self._join()
        return self.buffer

    def take(self) -> bytearray:
        """The body; the part forgets it, so the caller holds the only reference."""
        data = self.data
        self.buffer, self.pieces, self.size = bytearray(), [], 0
        return data


@dataclass
class Body:
    """What a request carried: audio files in upload order, and the small form fields."""

    files: list[Part]
    fields: dict[str, str] = field(default_factory=dict)
    pcm: bool = False  # the body itself was raw PCM (application/octet-stream)


class _Collector:
    """python-multipart callbacks that gather parts and their headers."""

    def __init__(self, max_files: int) -> None:
        self.parts: list[Part] = []
        self.max_files = max_files
        self._field, self._value = b"", b""
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_files:
            raise ApiError(413, "too_many_files", f"at most {self.max_files} files per request")
        self.parts.append(Part())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.append(memoryview(data)[start:end])
        if not part.filename and part.name != FIELD and part.size > MAX_FIELD_BYTES:
            raise ApiError(400, "bad_multipart", f"form field {part.name!r} is too long")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            _, options = parse_options_header(self._value)
            part = self.parts[-1]
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            part.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self._field, self._value = b"", b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_end": self.on_end,
        }


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "upload_too_large", f"the request body exceeds {limit} bytes", {"Connection": "close"}
    )


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    max_files: int
    idle_s: float  # longest pause between two chunks
    total_s: float  # longest time the whole body may take

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        """The limits the settings put on every request body."""
        return cls(
            settings.max_upload_bytes,
            settings.max_files,
            settings.idle_timeout_s,
            settings.upload_timeout_s,
        )


def _media_type(request: Request) -> tuple[bytes, dict[bytes, bytes]]:
    return parse_options_header(request.headers.get("content-type", ""))


def raw_kind(request: Request) -> str | None:
    """``audio`` or ``pcm`` when the body itself is the file, else None (multipart)."""
    kind = _media_type(request)[0].decode("latin-1").lower()
    if kind.startswith("audio/"):
        return "audio"
    return "pcm" if kind == "application/octet-stream" else None


def _boundary(request: Request) -> bytes:
    kind, options = _media_type(request)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data (with a boundary) with one or more parts named 'file', "
            "a single file as audio/*, or raw PCM as application/octet-stream",
        )
    boundary: bytes = options[b"boundary"]
    if len(boundary) > MAX_BOUNDARY:
        raise ApiError(
            400,
            "bad_multipart",
            f"the multipart boundary is {len(boundary)} characters long: "
            f"at most {MAX_BOUNDARY} are accepted",
        )
    return boundary


async def _chunks(request: Request, limits: BodyLimits) -> AsyncIterator[bytes]:
    """The body's chunks; 413 past ``max_bytes``, 408 when the client stalls or dawdles.

    One timer, moved at every chunk (``asyncio.wait_for`` would make a task per chunk)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(limits.max_bytes)
    stream, received = request.stream().__aiter__(), 0
    loop = asyncio.get_running_loop()
    ends = loop.time() + limits.total_s
    try:
        async with asyncio.timeout(None) as timer:
            while True:
                timer.reschedule(min(loop.time() + limits.idle_s, ends))
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except ClientDisconnect as exc:
                    raise ApiError(
                        499, "client_disconnected", "the client went away mid-upload"
                    ) from exc
                timer.reschedule(None)  # not while the caller works on the chunk
                received += len(chunk)
                if received > limits.max_bytes:
                    raise _too_large(limits.max_bytes)
                yield chunk
    except TimeoutError as exc:
        raise ApiError(
            408,
            "upload_timeout",
            f"the request body did not arrive in time (a pause over {limits.idle_s:g} s "
            f"or over {limits.total_s:g} s in all)",
            {"Connection": "close"},
        ) from exc


async def read_bytes(request: Request, limits: BodyLimits) -> bytearray:
    """The whole body in one buffer, read under ``limits`` (413 and 408 as for uploads)."""
    part = Part()
    async for chunk in _chunks(request, limits):
        part.append(chunk)
    return part.take()


async def read_body(request: Request, limits: BodyLimits) -> Body:
    """The uploaded files (and form fields) of a request, whatever its shape."""
    kind = raw_kind(request)
    if kind is not None:
        name = request.query_params.get("filename") or "body"
        part = Part(FIELD, name[:255])
        async for chunk in _chunks(request, limits):
            part.append(chunk)
        return Body([part], pcm=kind == "pcm")
    return await _read_multipart(request, limits)


async def _read_multipart(request: Request, limits: BodyLimits) -> Body:
    reader = MultipartReader(_boundary(request), limits.max_files)
    async for chunk in _chunks(request, limits):
        reader.feed(chunk)
    return reader.finish()


class MultipartReader:
    """A multipart body fed chunk by chunk to python-multipart, except for what it would only
    hand on as file data. In the middle of a part (no delimiter half-matched), libc's
    ``memmem`` finds the chunk's first delimiter: what comes before it goes straight to the
    part, and the parser gets the rest. With no delimiter in the chunk, only its last
    ``len(delimiter) - 1`` bytes go to the parser (where a delimiter split across chunks
    would start: one starting earlier would have ended inside the chunk), and only if they
    hold a CR (a delimiter's first byte; python-multipart's own test). A chunk that starts
    a part gives the parser its first ``HEAD_BYTES`` (the part's headers) first. The parser
    would search everything with ``bytes.find``, 2-3x slower on audio bytes (~180 µs per
    640 KB on this project's test machines)."""

    def __init__(self, boundary: bytes, max_files: int, fast: bool = True) -> None:
        """``fast=False``: every chunk goes to the parser (to compare against, in the tests
        and ``benchmarks/multipart.py``)."""
        self.collector = _Collector(max_files)
        try:
            self.parser = MultipartParser(boundary, self.collector.callbacks())  # type: ignore[arg-type]
        except (MultipartParseError, ValueError) as exc:
            raise ApiError(400, "bad_multipart", f"unusable multipart boundary: {exc}") from exc
        self.delimiter = b"\r\n--" + boundary
        self.received = 0
        self.direct = 0  # chunks whose audio went (at least in part) straight to their part
        # the parser's state, read to know when a chunk is plain part data (its attributes in
        # python-multipart 0.0.18-0.0.34; without them, every chunk goes to the parser)
        marks = getattr(self.parser, "marks", None)
        self.fast = fast and _MEMMEM is not None and isinstance(marks, dict)

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        try:
            start = self._hand_on(chunk) if self.fast and type(chunk) is bytes else 0
            if start < len(chunk):
                self.parser.write(chunk[start:] if start else chunk)
        except MultipartParseError as exc:
            raise _malformed(exc) from exc

    def _hand_on(self, chunk: bytes) -> int:
        """Give the parser a part's headers first, then the part its audio directly; return
        where the parser has to take over."""
        start = 0
        if not self._in_data():
            if len(chunk) <= HEAD_BYTES:
                return 0
            self.parser.write(chunk[:HEAD_BYTES])  # the part's headers, say
            start = HEAD_BYTES
            if not self._in_data():
                return start
        plain = self._plain_bytes(chunk, start)
        if plain:
            self.direct += 1
            self.collector.on_part_data(chunk, start, start + plain)
        return start + plain

    def _in_data(self) -> bool:
        """In the middle of a part, no delimiter half-matched at the end of the last write."""
        parser = self.parser
        if parser.state != MultipartState.PART_DATA or parser.index != 0:
            return False
        return bool(parser.marks.get("part_data") == 0)

    def _plain_bytes(self, chunk: bytes, start: int) -> int:
        """How many bytes of ``chunk`` from ``start`` on are surely part data, the parser
        being in the middle of a part (0: let it see them all)."""
        assert _MEMMEM is not None
        size, delimiter = len(chunk) - start, self.delimiter
        base = cast(int, ctypes.cast(ctypes.c_char_p(chunk), ctypes.c_void_p).value) + start
        found = _MEMMEM(base, size, delimiter, len(delimiter))
        if found is not None:
            return found - base
        tail = max(len(chunk) - len(delimiter) + 1, start)
        # no CR in the tail either (no delimiter can start there): all of it is data
        return len(chunk) - start if chunk.find(b"\r", tail) == -1 else tail - start

    def finish(self) -> Body:
        try:
            self.parser.finalize()
        except MultipartParseError as exc:
            raise _malformed(exc) from exc
        if self.received and not self.collector.ended:
            raise ApiError(
                400,
                "bad_multipart",
                "the multipart body ends before its closing boundary (truncated upload?)",
            )
        return _split_parts(self.collector.parts)


def _malformed(exc: MultipartParseError) -> ApiError:
    return ApiError(400, "bad_multipart", f"malformed multipart body: {exc}")


def _load_memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    """libc's ``memmem`` (glibc, musl, macOS); None where there is none."""
    try:
        memmem = ctypes.CDLL(None).memmem
    except (OSError, AttributeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return cast(Callable[[int, int, bytes, int], int | None], memmem)


_MEMMEM = _load_memmem()


def _split_parts(parts: list[Part]) -> Body:
    files = [p for p in parts if p.name == FIELD]
    if not files:
        names = sorted({p.name for p in parts})
        got = f"; got parts named {names}" if names else "; the body has no parts"
        raise ApiError(422, "missing_file", f"upload the audio in parts named '{FIELD}'{got}")
    for index, part in enumerate(files):
        part.filename = part.filename or f"file{index}"
    fields = {
        p.name: p.data.decode("utf-8", "replace").strip()
        for p in parts
        if p.name != FIELD and not p.filename
    }
    return Body(files, fields)
