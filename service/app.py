"""The app factory: ``create_app(settings)`` wires routes, errors, metrics and model loading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from service.core.models import Runtimes, check_bundles
from service.errors import install_error_handlers
from service.logs import AccessLogMiddleware
from service.metrics import Metrics
from service.routes import detect, embed, health, metrics, models, tag
from service.routes.common import require_api_key
from service.settings import Settings, get_settings

log = logging.getLogger("service.app")


def _lifespan(runtimes: Runtimes):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        check_bundles(runtimes.settings)  # a wrong path stops the start-up at once
        # Load and warm up in the background: /healthz answers and /readyz says 503 meanwhile.
        loader = asyncio.create_task(runtimes.load_all(), name="load-models")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            await runtimes.stop()  # finishes every queued window before the process exits
            log.info("stopped")

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: ``get_settings()`` from the environment)."""
    settings = settings or get_settings()
    app_metrics = Metrics()
    runtimes = Runtimes(settings, app_metrics)
    app = FastAPI(
        title="PANNs audio tagging",
        version="0.1.0",
        description="Tag, embed and detect sound events with PANNs bundles on ONNX Runtime.",
        lifespan=_lifespan(runtimes),
    )
    app.state.settings = settings
    app.state.runtimes = runtimes
    install_error_handlers(app)
    auth = [Depends(require_api_key)]
    for module in (tag, embed, detect, models):
        app.include_router(module.router, dependencies=auth)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(AccessLogMiddleware, metrics=app_metrics)
    return app
