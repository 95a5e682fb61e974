"""GET /healthz (the process is alive) and GET /readyz (every model loaded and warm)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.routes.common import runtimes_of
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    runtimes = runtimes_of(request)
    if runtimes.ready:
        status, code = "ready", 200
    else:
        status, code = ("failed" if runtimes.error else "loading"), 503
    body = Readiness(status=status, models=list(runtimes.models), error=runtimes.error)
    headers = None if code == 200 else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), code, headers=headers)
