"""GET /healthz (the process is alive and its models loaded or loading), GET /readyz.

Liveness fails (503) once loading the models has failed: an orchestrator then restarts the
container instead of keeping a process that can never serve. Load-error details go to the log
and to authenticated callers only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.deps import is_authenticated, tagger_of
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(request: Request) -> JSONResponse:
    failed = tagger_of(request).models.error is not None
    body = Health(status="failed" if failed else "ok")
    return JSONResponse(body.model_dump(), 503 if failed else 200)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    models = tagger_of(request).models
    if models.ready:
        status, code = "ready", 200
    else:
        status, code = ("failed" if models.error else "loading"), 503
    error = models.error if models.error and await is_authenticated(request) else None
    if models.error and error is None:
        error = "loading the models failed (details in the log)"
    body = Readiness(status=status, models=list(models.models), error=error)
    headers = None if code == 200 else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), code, headers=headers)
