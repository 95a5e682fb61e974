"""Core results -> the REST API's JSON (plain dicts, encoded by orjson).

The shapes are those of ``service.schemas`` (which /docs shows); building dicts directly
skips a pydantic round trip per response, which matters at thousands of clips a second.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from service.core.models import ModelRuntime
from service.core.results import (
    DetectResult,
    EmbedResult,
    Event,
    FileMetrics,
    FileResult,
    FrameTrack,
    TagResult,
    Top,
    WindowTop,
)
from service.errors import code_of, message_of

Json = dict[str, Any]


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def model_ref(runtime: ModelRuntime) -> Json:
    card, backend = runtime.card, runtime.backend
    return {
        "name": card.name,
        "arch": card.arch,
        "checksum": card.checksum,
        "provider": backend.provider,
        "precision": backend.precision,
    }


def error_info(exc: Exception) -> Json:
    return {"code": code_of(exc), "message": message_of(exc)}


def top_json(top: list[Top]) -> list[Json]:
    return [{"index": t.index, "mid": t.mid, "label": t.label, "score": t.score} for t in top]


def _metrics(m: FileMetrics | None) -> Json | None:
    if m is None:
        return None
    return {
        "decode_ms": m.decode_ms,
        "queue_ms": m.queue_ms,
        "inference_ms": m.inference_ms,
        "total_ms": m.total_ms,
        "windows": m.windows,
        "batch_sizes": m.batch_sizes,
    }


def _base(result: FileResult) -> Json:
    return {
        "filename": result.filename,
        "duration_s": result.duration_s,
        "metrics": _metrics(result.metrics),
        "error": None if result.error is None else error_info(result.error),
    }


def _window(w: WindowTop) -> Json:
    return {"start_s": w.start_s, "end_s": w.end_s, "top": top_json(w.top)}


def tag_json(result: TagResult, scores: bool = True) -> Json:
    out = _base(result)
    out["scores"] = result.scores.tolist() if scores and result.scores is not None else None
    out["top"] = None if result.top is None else top_json(result.top)
    out["windows"] = None if result.windows is None else [_window(w) for w in result.windows]
    return out


def embed_json(result: EmbedResult) -> Json:
    out = _base(result)
    out["embedding"] = None if result.embedding is None else result.embedding.tolist()
    return out


def _track(t: FrameTrack) -> Json:
    return {"index": t.index, "mid": t.mid, "label": t.label, "scores": t.scores.tolist()}


def _event(e: Event) -> Json:
    return {
        "index": e.index,
        "mid": e.mid,
        "label": e.label,
        "start_s": e.start_s,
        "end_s": e.end_s,
        "peak": e.peak,
    }


def detect_json(result: DetectResult) -> Json:
    out = _base(result)
    out["frames_per_second"] = result.frames_per_second
    out["tracks"] = None if result.tracks is None else [_track(t) for t in result.tracks]
    out["events"] = None if result.events is None else [_event(e) for e in result.events]
    return out
