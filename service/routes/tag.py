"""POST /v1/tag: label scores per uploaded file."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from service.core.pipeline import FileWork
from service.core.results import aggregate, top_entries
from service.routes.common import RuntimeDep, WindowDep, model_ref, run_request
from service.routes.docs import ERRORS, UPLOAD
from service.schemas import TagResponse, TagResult, WindowTop

router = APIRouter(tags=["inference"])


@router.post("/v1/tag", response_model=TagResponse, responses=ERRORS, openapi_extra=UPLOAD)
async def tag(
    request: Request,
    runtime: RuntimeDep,
    params: WindowDep,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
    threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    aggregate_: Annotated[Literal["max", "mean"], Query(alias="aggregate")] = "max",
) -> TagResponse:
    """Multipart upload, one or more parts named ``file``; results in upload order."""
    labels, rate = runtime.card.labels, runtime.card.sample_rate

    def build(work: FileWork, started: float) -> TagResult:
        rows = work.stack("clipwise")
        scores = aggregate(rows, aggregate_)
        windows = None
        if len(work.windows) > 1:
            windows = [
                WindowTop(
                    start_s=w.start / rate,
                    end_s=w.end / rate,
                    top=top_entries(row, labels, top_k, threshold),
                )
                for w, row in zip(work.windows, rows, strict=True)
            ]
        assert work.decoded is not None
        return TagResult(
            filename=work.filename,
            duration_s=work.decoded.duration_s,
            scores=scores.tolist(),
            top=top_entries(scores, labels, top_k, threshold),
            windows=windows,
            metrics=work.metrics(started),
        )

    def failed(work: FileWork) -> TagResult:
        return TagResult(filename=work.filename, error=work.error)

    results = await run_request(request, runtime, params, build, failed)
    return TagResponse(model=model_ref(runtime), results=results)
