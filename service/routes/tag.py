"""POST /v1/tag: label scores per uploaded file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.results import TagResult
from service.core.tagger import Tagger
from service.deps import query_params
from service.direct import DirectRoute
from service.present import tag_json
from service.queries import TagQuery
from service.routes.docs import upload_post
from service.routes.inference import run_upload
from service.schemas import TagResponse

PATH = "/v1/tag"
router = APIRouter(tags=["inference"])
parse_query = query_params(TagQuery)
TagParams = Annotated[TagQuery, Depends(parse_query)]


@upload_post(router, PATH, TagResponse, TagQuery)
async def tag(request: Request, query: TagParams) -> Response:
    """Label scores per file: multipart parts named ``file``, or one file as the raw body."""
    window, options = query.window(), query.options()

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]) -> list[TagResult]:
        return await tagger.tag_many(inputs, model=name, window=window, options=options)

    return await run_upload(
        request, query.model, query.pcm(), call, lambda r: tag_json(r, query.scores)
    )


# The same route, served past FastAPI's router (service.direct).
DIRECT = DirectRoute(PATH, parse_query, tag)
