"""POST /v1/embed: the embedding per uploaded file (mean over windows)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.core.inputs import AudioInput
from service.core.tagger import Tagger
from service.deps import ModelParam, WindowDep
from service.present import embed_json
from service.routes.docs import ERRORS, UPLOAD
from service.routes.inference import PcmDep, run_upload
from service.schemas import EmbedResponse

router = APIRouter(tags=["inference"])


@router.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def embed(
    request: Request, params: WindowDep, pcm: PcmDep, model: ModelParam = None
) -> Response:
    """The mean embedding per file; 422 for models without an embedding output."""

    async def call(tagger: Tagger, name: str, inputs: list[AudioInput]):  # type: ignore[no-untyped-def]
        return await tagger.embed_many(inputs, model=name, window=params)

    return await run_upload(request, model, pcm, call, embed_json)
