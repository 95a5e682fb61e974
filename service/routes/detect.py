"""POST /v1/detect: sound event detection for models with a framewise output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.tagger import Tagger
from service.core.tasks import DetectOptions
from service.deps import ModelParam, WindowDep, settings_of
from service.present import detect_json
from service.routes.docs import ERRORS, UPLOAD
from service.routes.inference import PcmDep, run_upload
from service.schemas import DetectResponse

router = APIRouter(tags=["inference"])


@router.post("/v1/detect", response_model=DetectResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def detect(
    request: Request,
    params: WindowDep,
    pcm: PcmDep,
    model: ModelParam = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="classes with frame scores")] = 5,
    threshold: Annotated[float, Query(ge=0, le=1, description="event threshold")] = 0.5,
    min_duration_s: Annotated[float, Query(ge=0, le=3600)] = 0.1,
    frames_per_second: Annotated[
        float | None,
        Query(
            gt=0,
            description="decimate frame scores (max-pool) to about this; at most the "
            "model's own frame rate",
        ),
    ] = None,
) -> Response:
    """Frame scores of the top classes and event segments, per uploaded file."""
    limit = settings_of(request).max_response_values
    options = DetectOptions(top_k, threshold, min_duration_s, frames_per_second, limit)

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]):  # type: ignore[no-untyped-def]
        return await tagger.detect_many(inputs, model=name, window=params, options=options)

    return await run_upload(request, model, pcm, call, detect_json)
