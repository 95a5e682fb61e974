"""The app factory: ``create_app(settings)`` wires the tagger, routes, errors and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI

from service.core.models import check_bundles
from service.core.tagger import Tagger
from service.deps import declare_key_schemes, require_api_key
from service.direct import DirectUploads, declared
from service.errors import install_error_handlers
from service.guards import HeaderLimit, ReleaseAfterLargeBodies
from service.logs import AccessLogMiddleware
from service.metrics import Metrics, observer_factory
from service.routes import apidocs, detect, embed, health, metrics, models, oip, page, stream, tag
from service.routes.docs import PROTECTED
from service.settings import Settings, get_settings

log = logging.getLogger("service.app")
FRONT_READY_WAIT_S = 10.0
UPLOADS = (tag, embed, detect)  # the routes service.direct serves past FastAPI's router


@dataclass(frozen=True)
class _Hooks:
    on_failure: Callable[[], None] | None  # the models cannot be loaded
    on_loaded: Callable[[], None] | None  # loaded (or linked to the engine): serving now


async def _load(tagger: Tagger, hooks: _Hooks) -> None:
    try:
        await tagger.load()
    except Exception:  # kept in models.error: /healthz and /readyz report it
        log.exception("loading models failed")
        if hooks.on_failure is not None:
            hooks.on_failure()
        return
    if hooks.on_loaded is not None:
        hooks.on_loaded()


def _lifespan(
    tagger: Tagger, hooks: _Hooks
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        check_bundles(tagger.settings)  # a wrong path stops the start-up at once
        # Load and warm up in the background: /healthz answers and /readyz says 503 meanwhile.
        loader = asyncio.create_task(_load(tagger, hooks), name="load-models")
        if tagger.settings.engine_socket:
            # A front shares the listening socket with the others: it starts taking
            # connections once it is ready (the engine loaded), if that comes soon, so that a
            # front that starts (or replaces a dead one) beside ready ones answers no client
            # with 503 not_ready. A long load (a first start) goes on in the background.
            await asyncio.wait({loader}, timeout=FRONT_READY_WAIT_S)
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            await tagger.close()  # finishes every queued window before the process exits
            log.info("stopped")

    return lifespan


def _log_drain_failure(task: asyncio.Task[None]) -> None:
    """Log the drain's exception: nothing awaits the task, so it would otherwise be lost."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("draining failed", exc_info=exc)


def _drainer(tagger: Tagger, grace_s: float) -> Callable[[], None]:
    """Start draining once: run queued windows (shortest requests first) and fail what is
    left shortly before the server's grace time ends, with 503 ``shutting_down``.

    ``started`` holds the task (the loop keeps only a weak reference to a running task)."""
    started: list[asyncio.Task[None]] = []

    def begin() -> None:
        if not started:
            budget = max(0.5, grace_s - max(1.0, 0.1 * grace_s))
            task = asyncio.create_task(tagger.close(timeout_s=budget), name="drain")
            task.add_done_callback(_log_drain_failure)
            started.append(task)

    return begin


def create_app(
    settings: Settings | None = None,
    on_load_failure: Callable[[], None] | None = None,
    on_loaded: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the service for ``settings`` (default: ``get_settings()`` from the environment).

    ``on_load_failure`` is called when the models cannot be loaded (``python -m service``
    passes one that stops the process with a non-zero status), ``on_loaded`` once they are
    (``python -m service`` freezes what the process loaded out of the garbage collector's
    walks: ``service.core.heap.freeze_loaded_objects``)."""
    settings = settings or get_settings()
    app_metrics = Metrics()
    tagger = Tagger(settings=settings, observer=observer_factory(app_metrics), events=app_metrics)
    app = FastAPI(
        title="PANNs audio tagging",
        version="0.1.0",
        description="Tag, embed and detect sound events with PANNs bundles on ONNX Runtime.",
        lifespan=_lifespan(tagger, _Hooks(on_load_failure, on_loaded)),
        docs_url=None,  # served by routes.apidocs: offline assets, behind the key
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.tagger = tagger
    app.state.metrics = app_metrics
    app.state.begin_drain = _drainer(tagger, settings.graceful_timeout_s)
    app.state.open_streams = 0
    install_error_handlers(app)
    _include_routes(app, settings)
    _add_middleware(app, settings, app_metrics)
    return app


def _include_routes(app: FastAPI, settings: Settings) -> None:
    """Every door: the REST routes behind the key, OIP v2, health, metrics, the WebSocket,
    the page and the API docs."""
    auth = [Depends(require_api_key)]
    for module in (tag, embed, detect, models):
        router = declare_key_schemes(module.router)
        app.include_router(router, dependencies=auth, responses=PROTECTED)
    # errors in the protocol's own shape
    app.include_router(declare_key_schemes(oip.router), dependencies=auth)
    app.include_router(oip.public)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(stream.router)  # checks API keys itself (header or first message)
    if settings.web_ui:
        app.include_router(page.router)
    app.include_router(apidocs.pages_router(public=settings.public_docs))
    app.include_router(apidocs.assets_router)
    apidocs.install_openapi(app, keys_required=bool(settings.api_key_list))


def _add_middleware(app: FastAPI, settings: Settings, app_metrics: Metrics) -> None:
    """The middleware, added innermost first: the direct upload path (past FastAPI's router),
    then the access log, header limits and memory release, which hold for it as well."""
    direct = {m.DIRECT.path: (m.DIRECT, declared(m.DIRECT, m.router.routes)) for m in UPLOADS}
    app.add_middleware(
        DirectUploads, routes=direct, auth=require_api_key, handlers=app.exception_handlers
    )
    app.add_middleware(AccessLogMiddleware, metrics=app_metrics)
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_kb * 1024)
    app.add_middleware(ReleaseAfterLargeBodies)
