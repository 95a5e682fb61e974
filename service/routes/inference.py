"""Running one upload request: read the body, call the core, watch for the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request

from service.core.audiocheck import AudioError
from service.core.inputs import AudioInput, PcmFormat
from service.core.results import FileResult
from service.core.tagger import Tagger
from service.deps import settings_of, tagger_of
from service.errors import ApiError, status_of
from service.present import Json, OrjsonResponse, error_info, model_ref
from service.upload import Body, BodyLimits, read_body

T = TypeVar("T")
R = TypeVar("R", bound=FileResult)


def _inputs(body: Body, pcm: PcmFormat | None) -> list[AudioInput]:
    if body.pcm and pcm is None:
        raise ApiError(
            422,
            "invalid_parameters",
            "a raw PCM body needs ?sample_rate= (and channels=, dtype=int16|float32)",
        )
    fmt = pcm if body.pcm else None
    # take(): the request keeps no second reference to the upload
    return [AudioInput(part.filename, data=part.take(), pcm=fmt) for part in body.files]


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watch(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (dropping its queued windows) if the client goes away.

    ``work`` runs in this task (no task of its own, no extra turns of the loop for a lone
    request); a watcher task cancels this one when the client disconnects."""
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def until_gone() -> None:
        nonlocal gone
        await _until_disconnect(request)
        gone = True
        this.cancel()

    watcher = asyncio.ensure_future(until_gone())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        this.uncancel()  # the cancellation was ours: it ends here, as a 499
        raise ApiError(499, "client_disconnected", "the client went away") from None
    finally:
        watcher.cancel()


def raise_if_all_failed(results: list[R]) -> None:
    """When no file could be used, answer with an error status (each file's reason listed)."""
    if not results or any(r.error is None for r in results):
        return
    first = results[0].error
    assert first is not None
    files = [{"filename": r.filename, **error_info(r.error)} for r in results if r.error]
    message = first.message if isinstance(first, AudioError) else str(first)
    if len(files) > 1:
        message = "no file could be used: " + "; ".join(
            f"{f['filename']}: {f['message']}" for f in files
        )
    code = error_info(first)["code"]
    raise ApiError(status_of(first), code, message, extra={"files": files})


async def run_upload(
    request: Request,
    model: str | None,
    pcm: PcmFormat | None,
    call: Callable[[Tagger, str, list[AudioInput]], Coroutine[Any, Any, list[R]]],
    present: Callable[[R], Json],
) -> OrjsonResponse:
    """Read the body, resolve the model (query or form field), run ``call``, present results.

    Admitted by the tagger first: a drain (SIGTERM) waits for a request whose body is still
    arriving, and refuses one that comes after it began (503 ``shutting_down``)."""
    tagger, settings = tagger_of(request), settings_of(request)
    with tagger.admit():
        tagger.models.get(model) if model else tagger.model()  # 503/404 before the body
        limits = BodyLimits.of(settings)
        body = await read_body(request, limits)
        runtime = tagger.model(model or body.fields.get("model") or None)
        request.state.model = runtime.name
        inputs = _inputs(body, pcm)
        results = await watch(request, call(tagger, runtime.name, inputs))
    raise_if_all_failed(results)
    content = {"model": model_ref(runtime), "results": [present(r) for r in results]}
    return OrjsonResponse(content)
