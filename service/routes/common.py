"""Dependencies shared by the routes: auth, model lookup, and running one request."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request

from service.core.batcher import BatcherStopped, DeadlineExceeded, QueueFull
from service.core.card import OutputKind
from service.core.models import ModelRuntime, Runtimes
from service.core.pipeline import AudioLimits, FileWork, WindowParams, infer_all, prepare_all
from service.errors import ApiError
from service.metrics import Metrics
from service.schemas import ModelRef
from service.settings import Settings
from service.upload import read_files

T = TypeVar("T")


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def runtimes_of(request: Request) -> Runtimes:
    runtimes: Runtimes = request.app.state.runtimes
    return runtimes


def require_api_key(request: Request) -> None:
    """401 unless a configured key is sent as ``Authorization: Bearer`` or ``X-API-Key``."""
    keys = settings_of(request).api_key_list
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    sent = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    sent = sent or request.headers.get("x-api-key", "")
    matched = False
    for key in keys:  # compare against every key: the time taken reveals nothing
        matched |= hmac.compare_digest(sent.encode(), key.encode())
    if not matched:
        message = "wrong API key" if sent else "missing API key: send 'Authorization: Bearer KEY'"
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def get_runtime(
    request: Request, model: Annotated[str | None, Query(description="model name")] = None
) -> ModelRuntime:
    runtimes = runtimes_of(request)
    if not runtimes.ready:
        why = runtimes.error or "models are loading"
        raise ApiError(503, "not_ready", why, {"Retry-After": "5"})
    name = model or runtimes.default_name or ""
    runtime = runtimes.models.get(name)
    if runtime is None:
        known = ", ".join(runtimes.models)
        raise ApiError(404, "unknown_model", f"no model named {name!r}; served: {known}")
    request.state.model = runtime.name
    return runtime


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def window_params(
    window_s: Annotated[float | None, Query(gt=0, le=60, description="default: card's")] = None,
    hop_s: Annotated[float | None, Query(gt=0, le=60, description="default: window_s")] = None,
    pad: Annotated[bool, Query(description="zero-pad the last window")] = True,
) -> WindowParams:
    return WindowParams(window_s, hop_s, pad)


WindowDep = Annotated[WindowParams, Depends(window_params)]


def require_output(runtime: ModelRuntime, kind: OutputKind, endpoint: str) -> None:
    if kind not in runtime.engine.kinds.values():
        raise ApiError(
            422,
            f"no_{kind}_output",
            f"model {runtime.name!r} has no {kind} output, so {endpoint} cannot use "
            f"it; pick a model with one via ?model=",
        )


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _watch(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (dropping its queued windows) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ApiError(499, "client_disconnected", "the client went away")
    return task.result()


async def run_request(
    request: Request,
    runtime: ModelRuntime,
    params: WindowParams,
    build: Callable[[FileWork, float], T],
    error: Callable[[FileWork], T],
) -> list[T]:
    """Read, decode, batch and infer every uploaded file; ``build`` formats each result."""
    settings, metrics = settings_of(request), runtimes_of(request).metrics
    parts = await read_files(request, settings.max_upload_bytes, settings.max_files)
    started = time.monotonic()
    deadline = started + settings.timeout_s
    limits = AudioLimits(settings.max_audio_s, settings.max_request_audio_s)
    works = await prepare_all(parts, runtime, params, limits, metrics)
    await _infer(request, works, runtime, deadline, metrics)
    return [build(w, started) if w.error is None else error(w) for w in works]


async def _infer(
    request: Request,
    works: list[FileWork],
    runtime: ModelRuntime,
    deadline: float,
    metrics: Metrics,
) -> None:
    remaining = deadline - time.monotonic()
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            await _watch(request, infer_all(works, runtime, deadline, metrics))
    except QueueFull as exc:
        raise ApiError(
            503,
            "overloaded",
            "the queue is full; retry later",
            {"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except (DeadlineExceeded, TimeoutError) as exc:
        raise ApiError(
            504,
            "timeout",
            f"not done within PANNS_TIMEOUT_S={runtimes_of(request).settings.timeout_s:g} s",
        ) from exc
    except BatcherStopped as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from exc


def model_ref(runtime: ModelRuntime) -> ModelRef:
    card, engine = runtime.card, runtime.engine
    return ModelRef(
        name=card.name,
        arch=card.arch,
        checksum=card.checksum,
        provider=engine.provider,
        precision=engine.precision,
    )
