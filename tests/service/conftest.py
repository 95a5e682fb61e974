"""Fixtures for the service tests: real bundles exported from zoo models, real HTTP servers.

Bundles are exported once per session with ``model_export.export_bundle`` from zoo models
with deterministic weights (``torch.manual_seed(0)``). Servers are real uvicorn servers on a
free port, in a thread (``LiveServer``) or in a subprocess (``service_process``).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn

from service.app import create_app
from service.core.batch import InferInput
from service.core.batcher import Batcher
from service.guards import bounded_http
from service.settings import Settings
from tests.conftest import REPO_ROOT, free_port

if TYPE_CHECKING:
    from training.models.common import PannsModel

TAGGER = "MobileNetV1"  # small 2-D model with an embedding output
SED = "Cnn14_DecisionLevelMax"  # framewise output, for /v1/detect
RATE = 32000


HEAD_GAIN = {TAGGER: 0.1, SED: 1.0}  # keeps the sigmoid outputs spread, not saturated


def deterministic_model(arch: str) -> PannsModel:
    """``arch`` with seed-0 weights and BatchNorm statistics measured on seeded audio.

    Freshly initialised BatchNorm layers (mean 0, variance 1) leave some zoo models with
    constant outputs (MobileNetV1 scores 0.5 for every class), which would make every
    parity check vacuous; one training-mode pass over generated clips and noise gives them
    real statistics, and a head gain keeps the scores away from 0 and 1.
    """
    import torch
    from torch import nn

    from model_export.audio import generated_batch
    from training.models import create_model

    torch.manual_seed(0)
    model = create_model(arch)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: the pass sets the statistics
    rate = model.sample_rate
    audio = np.concatenate(
        [
            generated_batch(rate, 2, 2 * rate, seed=100),
            noise(2.0, 0, rate)[None],
            noise(2.0, 1, rate)[None],
        ]
    )
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(audio))
        model.get_parameter("fc_audioset.weight").mul_(HEAD_GAIN.get(arch, 1.0))
    return model.eval()


def export(arch: str, root: Path, variants: bool = False) -> Path:
    """Export ``arch`` with deterministic weights into ``root/<arch lowercased>``
    (with the fp16 and int8 variants when ``variants``)."""
    from model_export import export_bundle

    name = arch.lower() + ("-variants" if variants else "")
    out = root / name
    if not (out / "model.json").is_file():
        export_bundle(
            deterministic_model(arch), out, arch=arch, name=name, fp16=variants, int8=variants
        )
    return out


def settings_for(*bundles: Path, **overrides: Any) -> Settings:
    """Test settings: 1 ORT thread, small limits, the given bundles."""
    values: dict[str, Any] = {
        "models": ",".join(str(b) for b in bundles),
        "threads": 1,
        "max_batch": 8,
        "max_delay_ms": 5,
        "warmup": "none",
        "max_audio_s": 130,
        "max_upload_mb": 20,
        "timeout_s": 60,
    }
    values.update(overrides)
    return Settings(**values)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """A real uvicorn server for ``create_app(settings)`` in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
            http=bounded_http(settings.max_header_kb * 1024),  # the service's HTTP protocol
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, wait_ready: bool = True, timeout: float = 180) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        if wait_ready:
            wait_ready_url(self.url, deadline)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def post_clip(self, path: str, name: str, x: np.ndarray, **params: Any) -> httpx.Response:
        """``x`` (float samples at ``RATE``) uploaded to ``path`` as the WAV file ``name``."""
        with self.client() as c:
            return c.post(path, params=params, files=files((name, encode(x, RATE))))


@contextlib.contextmanager
def engine_held(live: LiveServer, model: str | None = None) -> Iterator[Batcher]:
    """Hold every batch of ``model``'s batcher (default: the first model's) in its engine
    thread until the block ends, so that its queue cannot drain meanwhile, however fast the
    machine; on the way out the held batches run and the requests behind them complete.

    The batcher reads ``infer`` for every batch it starts, so wrapping it holds them all."""
    batcher: Batcher = live.app.state.tagger.models.get(model).batcher
    infer, released = batcher.infer, threading.Event()

    def held(batch: InferInput) -> dict[str, np.ndarray]:
        released.wait()
        return infer(batch)

    batcher.infer = held
    try:
        yield batcher
    finally:
        released.set()
        batcher.infer = infer


def wait_held_queue(batcher: Batcher, queued: int, timeout: float = 30) -> int:
    """Until a held batcher's queue (see ``engine_held``) settles after ``queued`` windows
    were queued at once: less one batch per engine thread (running) and one stacked (waiting
    for the engine), it cannot move until the hold ends. Its depth then."""
    settled = queued - (batcher.inflight + 1) * batcher.max_batch
    deadline = time.monotonic() + timeout
    while batcher.depth != settled:
        assert time.monotonic() < deadline, f"{batcher.depth} windows queued, not {settled}"
        time.sleep(0.01)
    return settled


def wait_until_200(
    url: str,
    deadline: float,
    what: str,
    *,
    request_timeout: float = 5,
    pause: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """GET ``url`` until it answers 200; connection errors count as not yet. ``alive`` (an
    assertion that the process behind ``url`` still runs) is checked before each try."""
    while True:
        if alive is not None:
            alive()
        try:
            if httpx.get(url, timeout=request_timeout).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not become ready"
        time.sleep(pause)


def wait_ready_url(url: str, deadline: float) -> None:
    wait_until_200(f"{url}/readyz", deadline, "service")


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, then SIGKILL when ``proc`` has not exited ``grace`` seconds later (a no-op
    when it has already exited); its exit status."""
    proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_subprocess(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """``python -m service`` in a subprocess with PANNS_* settings from ``env``."""
    full = {
        **os.environ,
        "PANNS_HOST": "127.0.0.1",
        "PANNS_PORT": str(port),
        "PANNS_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@dataclass
class ServiceProcess:
    """A running ``python -m service`` (see ``service_process``)."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything it printed (stdout and stderr); read it once the process has exited."""
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


@contextlib.contextmanager
def service_process(
    *bundles: Path, wait_ready: bool = True, **settings: str | int
) -> Iterator[ServiceProcess]:
    """``python -m service`` serving ``bundles`` on a free port, with ``PANNS_<NAME>`` set
    from each setting (``max_batch=1``: ``PANNS_MAX_BATCH=1``); ready for requests unless
    ``wait_ready`` is off.

    On the way out a process still running gets SIGTERM (a graceful stop, whose exit status
    a test may assert with ``proc.returncode``), and SIGKILL if that takes over 60 s; a test
    that stopped the process itself finds nothing left to do.
    """
    env = {f"PANNS_{name.upper()}": str(value) for name, value in settings.items()}
    env["PANNS_MODELS"] = ",".join(str(b) for b in bundles)
    port = free_port()
    running = ServiceProcess(start_subprocess(env, port), port)
    try:
        if wait_ready:
            wait_ready_url(running.url, time.monotonic() + 120)
        yield running
    finally:
        stop_process(running.proc, grace=60)


@pytest.fixture(scope="module")
def tagger_server(tagger_bundle: Path) -> Iterator[LiveServer]:
    server = LiveServer(settings_for(tagger_bundle)).start()
    yield server
    server.stop()


def noise(seconds: float, seed: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """Deterministic band-limited-ish test audio (float32, |x| < 1)."""
    rng = np.random.default_rng(seed)
    shape = (round(seconds * rate), channels) if channels > 1 else (round(seconds * rate),)
    return (0.1 * rng.standard_normal(shape)).clip(-0.99, 0.99).astype(np.float32)


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, data)) for name, data in items]


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, parsed with prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def metric_total(metrics: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in metrics.get(name, {}).items() if want <= set(k))


def run_bundle(bundle: Path, waveform: np.ndarray) -> dict[str, np.ndarray]:
    """The bundle's fp32 graph run directly on a (L,) waveform: {output name: (…) row}."""
    import onnxruntime as ort

    from service.core.card import read_card

    card = read_card(bundle)
    session = ort.InferenceSession(
        str(bundle / card.files["fp32"].path), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: waveform[None, :]})
    kinds = {o.name: o.kind for o in card.outputs}
    return {kinds.get(n, n): v[0] for n, v in zip(names, values, strict=True)}
