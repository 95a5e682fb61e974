"""POST /v1/detect: sound event detection for models with a framewise output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.results import DetectResult
from service.core.tagger import Tagger
from service.deps import query_params, settings_of
from service.direct import DirectRoute
from service.present import detect_json
from service.queries import DetectQuery
from service.routes.docs import upload_post
from service.routes.inference import run_upload
from service.schemas import DetectResponse

PATH = "/v1/detect"
router = APIRouter(tags=["inference"])
parse_query = query_params(DetectQuery)


DetectParams = Annotated[DetectQuery, Depends(parse_query)]


@upload_post(router, PATH, DetectResponse, DetectQuery)
async def detect(request: Request, query: DetectParams) -> Response:
    """Frame scores of the top classes and event segments, per uploaded file."""
    window = query.window()
    options = query.options(settings_of(request).max_response_values)

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]) -> list[DetectResult]:
        return await tagger.detect_many(inputs, model=name, window=window, options=options)

    return await run_upload(request, query.model, query.pcm(), call, detect_json)


# The same route, served past FastAPI's router (service.direct).
DIRECT = DirectRoute(PATH, parse_query, detect)
