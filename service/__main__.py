"""``python -m service``: run the API with uvicorn (graceful drain on SIGTERM)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from service.app import create_app
from service.core.card import BundleError
from service.core.models import check_bundles
from service.logs import configure_logging
from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        check_bundles(settings)
    except (BundleError, ValueError) as exc:
        sys.exit(
            f"cannot serve: {exc}\n(make a bundle with `make bundle` or "
            "`python -m model_export --official Cnn14 --out models/cnn14`, "
            "and point PANNS_MODELS at it)"
        )
    logging.getLogger("service").info(
        "serving %s on %s:%d", settings.models, settings.host, settings.port
    )
    # uvicorn handles SIGTERM: it stops accepting, lets accepted requests finish (up to
    # timeout_graceful_shutdown), then runs the lifespan shutdown that drains the batchers.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )


if __name__ == "__main__":
    main()
