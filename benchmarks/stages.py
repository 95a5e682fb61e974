"""Per-stage CPU cost of one upload, measured in-process on the service's own functions.

Each number is the median thread CPU time (``time.thread_time``) of ``repeats`` calls, in ms
per 10 s clip. ``decode_total`` calls the service's decoder; the lines under it repeat the calls
it makes (libsndfile block reads, the finiteness check, the mix-down, soxr's stream resampler,
the final concatenation) one stage at a time, so their sum next to ``decode_total`` shows what
is left unaccounted. The service modules are imported from ``service.core`` when present
(the refactored layout), else from ``service``.
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from benchmarks.formats import BOUNDARY, Format, multipart_body
from service import schemas, upload
from service.core import audio, windows
from service.core.backends import BackendOptions, Device, Precision
from service.core.backends.ort import OrtBackend

CHUNK = 1 << 16  # what one ASGI body message typically holds


def load_engine(bundle: Path, device: Device, precision: Precision, threads: int = 0) -> OrtBackend:
    """The service's ONNX Runtime backend on ``bundle`` (``run(batch) -> {kind: array}``)."""
    return OrtBackend(bundle, BackendOptions(device=device, precision=precision, threads=threads))


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median thread CPU time of ``fn()`` in ms (one untimed call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t0)
    return round(statistics.median(times) / 1e6, 3)


def _blocks(data: bytes, block_frames: int) -> tuple[list[np.ndarray], int]:
    with sf.SoundFile(io.BytesIO(data)) as handle:
        rate = handle.samplerate
        out = []
        while (block := handle.read(block_frames, dtype="float32", always_2d=True)).shape[0]:
            out.append(block)
    return out, rate


def decode_stages(data: bytes, target_rate: int, repeats: int) -> dict[str, Any]:
    """The decoder's total and its stages, for one encoded file."""
    frames = audio.BLOCK_FRAMES
    blocks, rate = _blocks(data, frames)
    mono = [b.mean(axis=1) if b.shape[1] > 1 else b[:, 0] for b in blocks]

    def resample() -> list[np.ndarray]:
        stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
        out = [stream.resample_chunk(m) for m in mono]
        out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return out

    pieces = resample() if rate != target_rate else mono
    out: dict[str, Any] = {
        "decode_total": cpu_ms(lambda: audio.decode(data, target_rate, 600.0), repeats),
        "soundfile_read": cpu_ms(lambda: _blocks(data, frames), repeats),
        "finite_check": cpu_ms(lambda: [np.isfinite(b).all() for b in blocks], repeats),
        "concatenate": cpu_ms(
            lambda: np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32), repeats
        ),
    }
    if blocks[0].shape[1] > 1:
        out["mixdown_mean_axis1"] = cpu_ms(lambda: [b.mean(axis=1) for b in blocks], repeats)
        out["mixdown_sum_times_half"] = cpu_ms(
            lambda: [(b[:, 0] + b[:, 1]) * np.float32(0.5) for b in blocks], repeats
        )
    if rate != target_rate:
        out["resample_soxr_hq"] = cpu_ms(resample, repeats)
    return out


def pcm_stage(data: bytes, repeats: int) -> dict[str, float]:
    """What a raw int16 door needs at least: bytes -> float32 in [-1, 1), finiteness."""

    def convert() -> np.ndarray:
        wave = np.frombuffer(data, "<i2").astype(np.float32)
        wave *= np.float32(1 / 32768)
        return wave

    return {"int16_to_float32": cpu_ms(convert, repeats)}


def window_stage(wave: np.ndarray, clip: int, max_batch: int, repeats: int) -> dict[str, float]:
    """Cutting one clip into windows, and its share of stacking a full batch."""
    cut = windows.cut(wave, clip, clip, True, 1)
    rows = [w.samples for w in cut] * max_batch
    return {
        "windows_cut": cpu_ms(lambda: windows.cut(wave, clip, clip, True, 1), repeats),
        "batch_stack_per_clip": round(
            cpu_ms(lambda: np.stack(rows[:max_batch]), repeats) / max_batch, 3
        ),
    }


async def _first_file(request: Any) -> bytes:
    """The service's body reader on ``request``: the first file's bytes."""
    limits = upload.BodyLimits(max_bytes=1 << 30, max_files=32, idle_s=60.0, total_s=600.0)
    return bytes((await upload.read_body(request, limits)).files[0].data)


def body_stage(fmt: Format, data: bytes, repeats: int) -> dict[str, Any]:
    """The service's upload reader on a real Starlette request fed 64 KiB body messages."""
    from starlette.requests import Request

    read_with = _first_file
    if fmt.container is None:
        body, ctype = data, "application/octet-stream"
        query = b"sample_rate=32000&channels=1&dtype=int16"
    else:
        body, ctype = multipart_body(data, "clip.bin"), f"multipart/form-data; boundary={BOUNDARY}"
        query = b""
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    loop = asyncio.new_event_loop()

    def read() -> bytes:
        sent = 0

        async def receive() -> dict[str, object]:
            nonlocal sent
            chunk = chunks[sent] if sent < len(chunks) else b""
            sent += 1
            return {"type": "http.request", "body": chunk, "more_body": sent < len(chunks)}

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/tag",
            "headers": headers,
            "query_string": query,
        }
        return loop.run_until_complete(read_with(Request(scope, receive)))

    try:
        if read() != data:
            raise RuntimeError("the upload reader returned other bytes than were sent")
        return {"body_read": cpu_ms(read, repeats), "chunks": len(chunks)}
    finally:
        loop.close()


def _tag_response(labels: list[Any], scores: np.ndarray) -> dict[str, Any]:
    top = np.argsort(-scores)[:10]
    return {
        "model": {
            "name": "nearfree",
            "arch": "NearFree",
            "checksum": "0" * 64,
            "provider": "CPUExecutionProvider",
            "precision": "fp32",
        },
        "results": [
            {
                "filename": "clip.wav",
                "duration_s": 10.0,
                "scores": scores.tolist(),
                "top": [
                    {
                        "index": int(i),
                        "mid": labels[i].mid,
                        "label": labels[i].display_name,
                        "score": float(scores[i]),
                    }
                    for i in top
                ],
                "windows": None,
                "metrics": {
                    "decode_ms": 5.1,
                    "queue_ms": 2.0,
                    "inference_ms": 1.0,
                    "total_ms": 9.0,
                    "windows": 1,
                    "batch_sizes": [16],
                },
                "error": None,
            }
        ],
    }


def json_stage(labels: list[Any], repeats: int) -> dict[str, Any]:
    """Encoding one /v1/tag response (527 scores + top 10): the route's path and plain
    encoders of the same dict."""
    from pydantic import TypeAdapter

    scores = np.random.default_rng(0).uniform(size=len(labels)).astype(np.float32)
    doc = _tag_response(labels, scores)
    adapter = TypeAdapter(schemas.TagResponse)
    model = schemas.TagResponse.model_validate(doc)

    def route_path() -> bytes:  # build the models, validate, dump (what FastAPI does)
        built = schemas.TagResponse.model_validate(_tag_response(labels, scores))
        return adapter.dump_json(adapter.validate_python(built))

    out: dict[str, Any] = {
        "bytes": len(adapter.dump_json(model)),
        "pydantic_build_validate_dump": cpu_ms(route_path, repeats),
        "pydantic_dump_json_only": cpu_ms(lambda: adapter.dump_json(model), repeats),
        "json_dumps_dict": cpu_ms(lambda: json.dumps(doc).encode(), repeats),
    }
    try:
        import orjson
    except ImportError:
        out["orjson_dumps_dict"] = None
        out["orjson"] = "not installed"
    else:
        out["orjson_dumps_dict"] = cpu_ms(lambda: orjson.dumps(doc), repeats)
    return out


def engine_stage(bundle: Path, max_batch: int, repeats: int) -> dict[str, float]:
    """The near-free engine's share per clip of one full batch (its floor, not the model)."""
    engine = load_engine(bundle, device="cpu", precision="fp32", threads=1)
    batch = np.zeros((max_batch, engine.card.clip_samples), np.float32)
    return {"engine_run_per_clip": round(cpu_ms(lambda: engine.run(batch), repeats) / max_batch, 3)}


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One stage's numbers, or why it could not be timed (the service may have changed)."""
    try:
        return fn()
    except Exception as exc:  # reported in the JSON; the other stages still run
        return {f"{name}_error": f"{type(exc).__name__}: {exc}"}


def pcm_door_stage(data: bytes, model_rate: int, repeats: int) -> dict[str, Any]:
    """The service's own raw PCM decoder."""

    def run() -> object:
        return audio.decode_pcm(
            data,
            sample_rate=model_rate,
            channels=1,
            dtype="int16",
            target_rate=model_rate,
            max_seconds=600.0,
        )

    return {"decode_pcm": cpu_ms(run, repeats)}


def _format_stages(
    fmt: Format, data: bytes, model_rate: int, clip: int, max_batch: int, repeats: int
) -> dict[str, Any]:
    stages = _guarded("body", lambda: body_stage(fmt, data, repeats))
    wave = np.zeros(clip, np.float32)
    if fmt.container is None:
        stages.update(pcm_stage(data, repeats))
        stages.update(_guarded("decode_pcm", lambda: pcm_door_stage(data, model_rate, repeats)))
    else:
        stages.update(_guarded("decode", lambda: decode_stages(data, model_rate, repeats)))
        wave = audio.decode(data, model_rate, 600.0).waveform
    stages.update(_guarded("windows", lambda: window_stage(wave, clip, max_batch, repeats)))
    return stages


def all_stages(
    payloads: dict[str, tuple[Format, bytes]],
    bundle: Path,
    model_rate: int,
    clip: int,
    max_batch: int,
    repeats: int,
) -> dict[str, Any]:
    """Every stage for every format (one representative file each)."""
    from service.core.card import read_card

    labels = list(read_card(bundle).labels)
    out: dict[str, Any] = {"unit": "CPU ms per 10 s clip (median)", "repeats": repeats}
    for name, (fmt, data) in payloads.items():
        out[name] = _format_stages(fmt, data, model_rate, clip, max_batch, repeats)
    out["response_json"] = _guarded("json", lambda: json_stage(labels, repeats))
    out["engine"] = _guarded("engine", lambda: engine_stage(bundle, max_batch, repeats))
    return out
