"""``PANNS_WORKERS`` > 1: one engine process per device, N front processes, one supervisor.

    supervisor (python -m service)        holds the listening socket, starts and replaces
      |- engine  (python -m service.supervisor engine)   models: backend + batcher, one copy
      |- front 1 (python -m service.supervisor front FD)  HTTP, decoding, windowing
      |- front N ...                                     (all accept on the same socket)

Fronts hand windows to the engine in shared memory and tell it where over a Unix socket
(``service.core.remote``, ``service.core.engine_server``, ``service.core.wire``,
``service.core.handoff``), so the windows of every front share
the engine's batches. Metrics go through prometheus-client's
multiprocess mode, so any front's ``/metrics`` shows all processes. SIGTERM: the fronts
drain first (their requests need the engine), then the engine finishes its queue; exit 0.
A front that dies is replaced (only its own connections fail); one that dies soon after its
start waits before its replacement starts (2, 4, 8, 16 s), and after five such deaths in a
row the service stops with a non-zero status, as it does when the engine dies: for the
orchestrator to restart it, not a restart storm of fronts that cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.core.heap import freeze_loaded_objects, keep_request_buffers
from service.settings import Settings, get_settings

log = logging.getLogger("service.supervisor")
ENV_SOCKET = "PANNS_ENGINE_SOCKET"
QUICK_EXIT_S = 10.0  # a front that dies sooner than this after its start failed to start
MAX_QUICK_EXITS = 5  # such deaths in a row in one slot: the service stops
FIRST_BACKOFF_S = 2.0  # before the replacement of a front that died young; doubles each time


def restart_delay(lived_s: float, quick: int) -> tuple[int, float | None]:
    """A front died after ``lived_s`` seconds, its slot's ``quick`` earlier fronts having died
    young in a row: the new count, and how long its replacement waits (None: give up)."""
    quick = quick + 1 if lived_s < QUICK_EXIT_S else 0
    if quick >= MAX_QUICK_EXITS:
        return quick, None
    return quick, 0.0 if quick == 0 else FIRST_BACKOFF_S * 2 ** (quick - 1)


@dataclass
class FrontSlot:
    """One of the N fronts: its process, when it started, and once it died, when its
    replacement is due."""

    proc: subprocess.Popen[bytes]
    started: float
    quick: int = 0  # fronts of this slot that died young, in a row
    due: float | None = None  # set while the slot waits to start a replacement


def listen(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tmp = Path(tempfile.mkdtemp(prefix="panns-"))
        self.engine_path = str(self.tmp / "engine.sock")
        metrics_dir = self.tmp / "metrics"
        metrics_dir.mkdir()
        self.env = {
            **os.environ,
            ENV_SOCKET: self.engine_path,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        self.sock = listen(settings)
        self.engine: subprocess.Popen[bytes] | None = None
        self.slots: list[FrontSlot] = []
        self.stopping = False

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        fds = (self.sock.fileno(),) if args[0] == "front" else ()
        return subprocess.Popen(
            [sys.executable, "-m", "service.supervisor", *args], env=self.env, pass_fds=fds
        )

    def _spawn_front(self) -> subprocess.Popen[bytes]:
        return self._spawn("front", str(self.sock.fileno()))

    def start(self) -> None:
        self.engine = self._spawn("engine")
        now = time.monotonic()
        self.slots = [
            FrontSlot(self._spawn_front(), now) for _ in range(self.settings.worker_count)
        ]
        log.info("engine pid %d, %d front processes", self.engine.pid, len(self.slots))

    def _replace_dead_fronts(self) -> bool:
        """Replace every front that died (after a wait when it died young); False once a
        slot's fronts keep dying at start-up."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.due is None and slot.proc.poll() is not None and not self._bury(slot, now):
                return False
            if slot.due is not None and now >= slot.due:
                slot.proc, slot.started, slot.due = self._spawn_front(), now, None
        return True

    def _bury(self, slot: FrontSlot, now: float) -> bool:
        """A front died: its metrics files are closed, its replacement scheduled."""
        from prometheus_client import multiprocess

        front = slot.proc
        multiprocess.mark_process_dead(front.pid, self.env["PROMETHEUS_MULTIPROC_DIR"])
        slot.quick, delay = restart_delay(now - slot.started, slot.quick)
        if delay is None:
            log.error("%d fronts in a row died at start-up: stopping", slot.quick)
            return False
        log.warning(
            "front pid %d exited with %s: replacing it in %g s", front.pid, front.returncode, delay
        )
        slot.due = now + delay
        return True

    def watch(self) -> int:
        """Keep every process running until SIGTERM/SIGINT, the engine's end, or fronts that
        keep dying at start-up (both: a non-zero status)."""
        assert self.engine is not None
        while not self.stopping:
            if self.engine.poll() is not None:
                log.error("the engine exited with %s", self.engine.returncode)
                self.stop()
                return self.engine.returncode or 1
            if not self._replace_dead_fronts():
                self.stop()
                return 1
            time.sleep(0.2)
        return self.stop()

    def stop(self) -> int:
        """Drain the fronts, then the engine; 0 when everything ended cleanly."""
        self.stopping = True
        grace = self.settings.graceful_timeout_s + 5
        codes = _terminate([s.proc for s in self.slots if s.due is None], grace)
        if self.engine is not None:
            codes += _terminate([self.engine], grace)
        self.sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        log.info("stopped: exit statuses %s (fronts, then the engine)", codes)
        return 0 if all(c == 0 for c in codes) else 1


def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    ends, codes = time.monotonic() + grace, []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.1, ends - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def supervise(settings: Settings) -> int:
    supervisor = Supervisor(settings)

    def on_signal(*_: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.start()
    return supervisor.watch()


async def _engine_main(settings: Settings) -> int:
    from service.core.engine_server import EngineServer
    from service.core.tagger import Tagger
    from service.metrics import Metrics, observer_factory

    metrics = Metrics()
    metrics.time_gc()
    tagger = Tagger(
        settings=settings.model_copy(update={"engine_socket": ""}),
        observer=observer_factory(metrics),
    )
    tagger.models.lone_inline = True  # this loop serves the batchers alone
    server = EngineServer(tagger.models, os.environ[ENV_SOCKET])
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await tagger.models.load_all()
    except Exception:
        log.exception("loading models failed")
        await asyncio.sleep(1.0)  # let the fronts read the error
        return 1
    freeze_loaded_objects()
    await stop.wait()
    await tagger.close()  # every queued window is finished first
    await server.close()
    return 0


def engine_main() -> int:
    from service.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    keep_request_buffers()
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        return runner.run(_engine_main(settings))


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (as uvicorn uses it in the fronts): the engine's loop handles
    every window's message; None falls back to asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def front_main(fd: int) -> int:
    # A SIGTERM before uvicorn takes over (a front replaced just as the service stops)
    # ends this front cleanly instead of by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from service.__main__ import load_failed, run_server, stop_on_failure
    from service.app import create_app
    from service.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    # A front that cannot reach a ready engine (it failed, or is not ready after
    # ``EngineClient.connect``'s wait) exits, so the supervisor starts a fresh one that waits
    # again; staying up would leave it answering 503 not_ready for ever, beside ready fronts.
    app = create_app(settings, on_load_failure=stop_on_failure, on_loaded=freeze_loaded_objects)
    run_server(app, settings, socket.socket(fileno=fd))
    return 1 if load_failed() else 0


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "engine":
        sys.exit(engine_main())
    if role == "front":
        sys.exit(front_main(int(sys.argv[2])))
    sys.exit("usage: python -m service.supervisor engine | front FD")
