"""``python -m service``: run the API with uvicorn (graceful drain on SIGTERM)."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys

import uvicorn

from service.app import create_app
from service.core.card import BundleError
from service.core.models import check_bundles
from service.logs import configure_logging
from service.settings import Settings, get_settings

log = logging.getLogger("service")


def _is_public(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host not in ("localhost",)


def _stop_on_failure() -> None:
    """A model that cannot load will never serve: stop, so the orchestrator restarts us."""
    log.error("exiting: the models could not be loaded")
    _state["failed"] = True
    os.kill(os.getpid(), signal.SIGTERM)


_state = {"failed": False}


def uvicorn_config(settings: Settings) -> dict[str, object]:
    """Server limits: header size, keep-alive; uvicorn drains on SIGTERM for the grace time."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": settings.max_header_kb * 1024,
    }


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
    if _is_public(settings.host) and not settings.api_key_list:
        log.warning(
            "listening on %s without API keys: anyone who can reach it can use it", settings.host
        )
    log.info("serving %s on %s:%d", settings.models, settings.host, settings.port)
    if settings.worker_count > 1 and not settings.engine_socket:
        from service.supervisor import supervise

        sys.exit(supervise(settings))
    app = create_app(settings, on_load_failure=_stop_on_failure)
    from service.supervisor import keep_signals

    keep_signals()
    uvicorn.run(app, **uvicorn_config(settings))  # type: ignore[arg-type]
    sys.exit(1 if _state["failed"] else 0)


if __name__ == "__main__":
    main()
