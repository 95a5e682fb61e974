"""POST /v1/embed: the embedding per uploaded file (mean over windows)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.core.pipeline import FileWork
from service.routes.common import RuntimeDep, WindowDep, model_ref, require_output, run_request
from service.routes.docs import ERRORS, UPLOAD
from service.schemas import EmbedResponse, EmbedResult

router = APIRouter(tags=["inference"])


@router.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def embed(request: Request, runtime: RuntimeDep, params: WindowDep) -> EmbedResponse:
    """Multipart upload, parts named ``file``; 422 for models without an embedding output."""
    require_output(runtime, "embedding", "/v1/embed")

    def build(work: FileWork, started: float) -> EmbedResult:
        assert work.decoded is not None
        vector = work.stack("embedding").mean(axis=0)
        return EmbedResult(
            filename=work.filename,
            duration_s=work.decoded.duration_s,
            embedding=vector.tolist(),
            metrics=work.metrics(started),
        )

    def failed(work: FileWork) -> EmbedResult:
        return EmbedResult(filename=work.filename, error=work.error)

    results = await run_request(request, runtime, params, build, failed)
    return EmbedResponse(model=model_ref(runtime), results=results)
