"""``python -m service``: run the API with uvicorn (graceful drain on SIGTERM)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.app import create_app
from service.core.card import BundleError
from service.core.heap import freeze_loaded_objects, keep_request_buffers
from service.core.models import check_bundles
from service.guards import bounded_http
from service.logs import configure_logging
from service.settings import Settings, get_settings

log = logging.getLogger("service")


def _is_public(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host not in ("localhost",)


def stop_on_failure() -> None:
    """A model that cannot load will never serve: stop, so the orchestrator restarts us."""
    log.error("exiting: the models could not be loaded")
    _state["failed"] = True
    os.kill(os.getpid(), signal.SIGTERM)


_state = {"failed": False}


def load_failed() -> bool:
    """Whether ``stop_on_failure`` ran: the process exits with status 1."""
    return _state["failed"]


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
        # httptools with a bound on the request line + headers: a 300 MB header must be
        # refused, not parsed.
        "http": bounded_http(settings.max_header_kb * 1024),
        "ws_max_size": settings.max_frame_kb * 1024 + 1024,
    }


def _settings_or_exit() -> Settings:
    """The settings, or exit with one line per bad ``PANNS_*`` variable (not a traceback)."""
    try:
        return get_settings()
    except ValidationError as exc:
        lines = [
            f"  PANNS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        sys.exit("cannot serve: bad settings\n" + "\n".join(lines))


def main() -> None:
    settings = _settings_or_exit()
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
    app = create_app(settings, on_load_failure=stop_on_failure, on_loaded=freeze_loaded_objects)
    run_server(app, settings)
    sys.exit(1 if load_failed() else 0)


class DrainingServer(uvicorn.Server):
    """uvicorn, telling the app when SIGTERM starts the drain (``app.state.begin_drain``), so
    work still queued near the end of the grace time is answered 503 ``shutting_down`` in
    JSON rather than cut off by uvicorn with a bare 500."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.begin_drain = getattr(app.state, "begin_drain", None)

    def handle_exit(self, sig: int, frame: object) -> None:
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        if self.begin_drain is not None and self.started:
            asyncio.get_event_loop().call_soon_threadsafe(self.begin_drain)


def run_server(app: FastAPI, settings: Settings, sock: socket.socket | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain; returns (never dies by the signal)."""
    keep_request_buffers()
    app.state.metrics.time_gc()
    config = uvicorn_config(settings)
    if sock is not None:
        config.pop("host"), config.pop("port")
    server = DrainingServer(uvicorn.Config(app, **config), app)  # type: ignore[arg-type]
    # uvicorn raises the signal again after its drain, which would end the process by signal
    # (status 143) after a clean drain: a no-op handler underneath keeps status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=None if sock is None else [sock])


if __name__ == "__main__":
    main()
