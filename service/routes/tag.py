"""POST /v1/tag: label scores per uploaded file."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.tagger import Tagger
from service.core.tasks import TagOptions
from service.deps import ModelParam, WindowDep
from service.present import tag_json
from service.routes.docs import ERRORS, UPLOAD
from service.routes.inference import PcmDep, run_upload
from service.schemas import TagResponse

router = APIRouter(tags=["inference"])


@router.post("/v1/tag", response_model=TagResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def tag(
    request: Request,
    params: WindowDep,
    pcm: PcmDep,
    model: ModelParam = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
    threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    aggregate_: Annotated[Literal["max", "mean"], Query(alias="aggregate")] = "max",
    scores: Annotated[bool, Query(description="false: only `top` (smaller responses)")] = True,
) -> Response:
    """Label scores per file: multipart parts named ``file``, or one file as the raw body."""
    options = TagOptions(top_k, threshold, aggregate_)

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]):  # type: ignore[no-untyped-def]
        return await tagger.tag_many(inputs, model=name, window=params, options=options)

    return await run_upload(request, model, pcm, call, lambda r: tag_json(r, scores))
