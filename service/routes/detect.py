"""POST /v1/detect: sound event detection for models with a framewise output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.core.pipeline import FileWork
from service.core.results import decimate, events, tracks
from service.core.windows import stitch_frames
from service.errors import ApiError
from service.routes.common import RuntimeDep, WindowDep, model_ref, require_output, run_request
from service.routes.docs import ERRORS, UPLOAD
from service.schemas import DetectResponse, DetectResult

router = APIRouter(tags=["inference"])


@router.post("/v1/detect", response_model=DetectResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def detect(
    request: Request,
    runtime: RuntimeDep,
    params: WindowDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes with frame scores")] = 5,
    threshold: Annotated[float, Query(ge=0, le=1, description="event threshold")] = 0.5,
    min_duration_s: Annotated[float, Query(ge=0, le=3600)] = 0.1,
    frames_per_second: Annotated[
        float | None, Query(gt=0, description="decimate frame scores (max-pool) to about this")
    ] = None,
) -> DetectResponse:
    """Frame scores of the top classes and event segments, per uploaded file."""
    require_output(runtime, "framewise", "/v1/detect")
    card = runtime.card
    fps = card.frames_per_second
    if fps is None:
        raise ApiError(422, "no_framewise_output", f"model {card.name!r} states no frame rate")
    factor = max(1, round(fps / frames_per_second)) if frames_per_second else 1

    def build(work: FileWork, started: float) -> DetectResult:
        assert work.decoded is not None and fps is not None
        rows = [r.outputs["framewise"] for r in work.results]
        n = work.decoded.waveform.shape[0]
        frames = stitch_frames(rows, work.windows, card.sample_rate, fps, n)
        duration = work.decoded.duration_s
        return DetectResult(
            filename=work.filename,
            duration_s=duration,
            frames_per_second=fps / factor,
            tracks=tracks(decimate(frames, factor), card.labels, top_k),
            events=events(frames, card.labels, fps, threshold, min_duration_s, duration),
            metrics=work.metrics(started),
        )

    def failed(work: FileWork) -> DetectResult:
        return DetectResult(filename=work.filename, error=work.error)

    results = await run_request(request, runtime, params, build, failed)
    return DetectResponse(model=model_ref(runtime), results=results)
