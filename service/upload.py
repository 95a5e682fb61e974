"""Stream a multipart body with a hard byte limit: 413 while reading, never buffered unbounded."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from service.errors import ApiError

FIELD = "file"


@dataclass
class Part:
    name: str = ""
    filename: str = ""
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


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
        self.parts[-1].chunks.append(data[start:end])

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


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data (with a boundary) with one or more parts named 'file'",
        )
    return options[b"boundary"]


async def read_files(request: Request, max_bytes: int, max_files: int) -> list[Part]:
    """The parts named ``file``, in upload order; 413 as soon as the body passes ``max_bytes``."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    collector = _Collector(max_files)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
        if received and not collector.ended:
            raise ApiError(
                400,
                "bad_multipart",
                "the multipart body ends before its closing boundary (truncated upload?)",
            )
    except ClientDisconnect as exc:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from exc
    except MultipartParseError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    return _files_only(collector.parts)


def _files_only(parts: list[Part]) -> list[Part]:
    files = [p for p in parts if p.name == FIELD]
    if not files:
        names = sorted({p.name for p in parts})
        got = f"; got parts named {names}" if names else "; the body has no parts"
        raise ApiError(422, "missing_file", f"upload the audio in parts named '{FIELD}'{got}")
    for index, part in enumerate(files):
        part.filename = part.filename or f"file{index}"
    return files
