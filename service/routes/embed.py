"""POST /v1/embed: the embedding per uploaded file (mean over windows)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.results import EmbedResult
from service.core.tagger import Tagger
from service.deps import query_params
from service.direct import DirectRoute
from service.present import embed_json
from service.queries import UploadQuery
from service.routes.docs import upload_post
from service.routes.inference import run_upload
from service.schemas import EmbedResponse

PATH = "/v1/embed"
router = APIRouter(tags=["inference"])
parse_query = query_params(UploadQuery)
EmbedParams = Annotated[UploadQuery, Depends(parse_query)]


@upload_post(router, PATH, EmbedResponse, UploadQuery)
async def embed(request: Request, query: EmbedParams) -> Response:
    """The mean embedding per file; 422 for models without an embedding output."""
    window = query.window()

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]) -> list[EmbedResult]:
        return await tagger.embed_many(inputs, model=name, window=window)

    return await run_upload(request, query.model, query.pcm(), call, embed_json)


# The same route, served past FastAPI's router (service.direct).
DIRECT = DirectRoute(PATH, parse_query, embed)
