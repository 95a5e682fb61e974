"""Loaded models: engine + batcher per bundle, loaded and warmed up in the background."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from service.core.backends.ort import CUDA, Engine
from service.core.batcher import Batcher
from service.core.card import ModelCard, read_card
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.core.models")


class _Observer:
    """Feeds a batcher's events into the Prometheus metrics of one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics, self.model = metrics, model

    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None:
        self.metrics.batch_size.labels(self.model).observe(size)
        self.metrics.compute.labels(self.model).observe(compute_s)
        hist = self.metrics.queue_wait.labels(self.model)
        for wait in waits:
            hist.observe(wait)

    def depth_changed(self, depth: int) -> None:
        self.metrics.queue_depth.labels(self.model).set(depth)

    def dropped(self, reason: str, count: int) -> None:
        self.metrics.dropped_windows.labels(self.model, reason).inc(count)


@dataclass
class ModelRuntime:
    card: ModelCard
    engine: Engine
    batcher: Batcher
    default: bool = False

    @property
    def name(self) -> str:
        return self.card.name


@dataclass
class Runtimes:
    """Every served model by name; ``ready`` once all are loaded and warmed up."""

    settings: Settings
    metrics: Metrics
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    ready: bool = False
    error: str | None = None

    @property
    def default_name(self) -> str | None:
        """The first configured bundle's model (registered first)."""
        return next(iter(self.models), None)

    def warmup_sizes(self, provider: str) -> list[int]:
        mode, top = self.settings.warmup, self.settings.max_batch
        if mode == "auto":
            mode = "all" if provider == CUDA else "ends"
        return {"none": [], "ends": sorted({1, top}), "all": list(range(1, top + 1))}[mode]

    def _load_one(self, bundle: str) -> tuple[Engine, list[int]]:
        s = self.settings
        engine = Engine(
            bundle,
            device=s.device,
            precision=s.precision,
            threads=s.threads,
            verify=s.verify_bundles,
        )
        sizes = self.warmup_sizes(engine.provider)
        engine.warm_up(sizes, engine.card.clip_samples)
        return engine, sizes

    def _register(self, engine: Engine) -> None:
        s, card = self.settings, engine.card
        if card.name in self.models:
            raise ValueError(f"two bundles are named {card.name!r}")
        batcher = Batcher(
            engine.run,
            max_batch=s.max_batch,
            max_delay_s=s.max_delay_ms / 1000,
            max_queue=s.max_queue,
            observer=_Observer(self.metrics, card.name),
            name=card.name,
        )
        batcher.start()
        self.models[card.name] = ModelRuntime(card, engine, batcher, default=not self.models)
        self.metrics.model_info.labels(
            card.name, card.arch, card.checksum, engine.provider, engine.precision
        ).set(1)
        self.metrics.queue_depth.labels(card.name).set(0)

    async def load_all(self) -> None:
        """Load, warm up and start every bundle (in a thread: the server stays responsive)."""
        try:
            for bundle in self.settings.model_dirs:
                engine, sizes = await asyncio.to_thread(self._load_one, str(bundle))
                self._register(engine)
                log.info("model %s ready (warm-up batch sizes %s)", engine.card.name, sizes)
            self.ready = True
        except Exception as exc:  # reported by /readyz and the log; the server stays up
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")

    async def stop(self) -> None:
        for runtime in self.models.values():
            await runtime.batcher.stop()


def check_bundles(settings: Settings) -> list[ModelCard]:
    """Read every configured card now, so a wrong path fails at start-up, not later."""
    if not settings.model_dirs:
        raise ValueError("PANNS_MODELS names no bundle directory")
    return [read_card(path) for path in settings.model_dirs]
