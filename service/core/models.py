"""Loaded models: a backend and a batcher per bundle, loaded and warmed up in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.core.backends import Backend, BackendOptions, load_backend
from service.core.batch import BatchObserver, WindowResult
from service.core.batcher import Batcher
from service.core.card import ModelCard, OutputKind, read_card
from service.core.errors import MissingOutput, NotReady, UnknownModel
from service.settings import Settings

log = logging.getLogger("service.core.models")

# Builds the observer of one model's batcher (the service feeds Prometheus with it).
ObserverFactory = Callable[[ModelCard, Backend], BatchObserver | None]


class WindowQueue(Protocol):
    """Where a model's windows wait for its engine: the ``Batcher`` in this process, or, in a
    front, a ``service.core.remote.RemoteQueue`` (the engine process's batcher)."""

    async def submit(
        self, windows: Sequence[np.ndarray], deadline: float, kinds: Sequence[str] | None = None
    ) -> list[WindowResult]: ...

    async def stop(self, timeout: float | None = None) -> None: ...


@dataclass
class ModelRuntime:
    """One served model: its card, the backend that runs it and the batcher in front."""

    card: ModelCard
    backend: Backend
    batcher: WindowQueue
    default: bool = False

    @property
    def name(self) -> str:
        return self.card.name

    def require(self, kind: OutputKind, purpose: str) -> None:
        """Raise ``MissingOutput`` unless the model has an output of ``kind``."""
        if kind not in self.backend.kinds.values():
            raise MissingOutput(
                kind,
                f"model {self.name!r} has no {kind} output, so {purpose} cannot use it; "
                "pick a model with one",
            )
        if kind == "framewise" and self.card.frames_per_second is None:
            raise MissingOutput(kind, f"model {self.name!r} states no frame rate")


def backend_options(settings: Settings) -> BackendOptions:
    return BackendOptions(
        device=settings.device,
        precision=settings.precision,
        threads=settings.threads,
        verify=settings.verify_bundles,
        url=settings.engine_url,
        api_key=settings.engine_api_key.get_secret_value(),
        timeout_s=settings.timeout_s,
        inflight=settings.inflight_batches,
        pad_batches=settings.ort_pad_batches,
        cudnn_search=settings.ort_cudnn_search,
        prefer_nhwc=settings.ort_prefer_nhwc,
        cuda_graph=settings.ort_cuda_graph,
        tensorrt=settings.ort_tensorrt,
        trt_cache_dir=settings.ort_trt_cache_dir,
        max_batch=settings.max_batch,
    )


def warmup_sizes(mode: str, device: str, max_batch: int) -> list[int]:
    """Batch sizes run at start-up: every size on a GPU (kernels per shape), the ends on CPU."""
    if mode == "auto":
        mode = "all" if device == "cuda" else "ends"
    return {"none": [], "ends": sorted({1, max_batch}), "all": list(range(1, max_batch + 1))}[mode]


@dataclass
class Models:
    """Every served model by name; ``ready`` once all are loaded and warmed up."""

    settings: Settings
    observer: ObserverFactory | None = None
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    ready: bool = False
    error: str | None = None
    # set once loading has ended, loaded or failed: what an engine's fronts wait for
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # a lone window runs on the event loop's thread (``Batcher.lone_inline``): for the engine
    # process, whose loop serves nothing but the batchers, never for one that serves HTTP
    lone_inline: bool = False

    @property
    def default_name(self) -> str | None:
        """The first configured bundle's model (registered first)."""
        return next(iter(self.models), None)

    def get(self, name: str | None = None) -> ModelRuntime:
        """The model called ``name`` (default: the first); ``NotReady``/``UnknownModel``."""
        if not self.ready:
            raise NotReady("models failed to load" if self.error else "models are loading")
        name = name or self.default_name or ""
        runtime = self.models.get(name)
        if runtime is None:
            known = ", ".join(self.models)
            raise UnknownModel(f"no model named {name!r}; served: {known}")
        return runtime

    def local_batcher(self, name: str | None = None) -> Batcher:
        """``get(name)``'s batcher, which must run in this process (the engine process's, or
        one process's): ``enqueue`` is for callers on its own event loop."""
        queue = self.get(name).batcher
        if not isinstance(queue, Batcher):
            raise TypeError(f"model {name!r} is batched in another process")
        return queue

    def _load_one(self, bundle: str) -> tuple[Backend, list[int]]:
        s = self.settings
        backend = load_backend(s.backend, bundle, backend_options(s))
        sizes = warmup_sizes(s.warmup, backend.device, s.max_batch)
        backend.warm_up(sizes, backend.card.clip_samples)
        return backend, sizes

    def _register(self, backend: Backend) -> None:
        s, card = self.settings, backend.card
        if card.name in self.models:
            raise ValueError(f"two bundles are named {card.name!r}")
        batcher = Batcher(
            backend.run,
            max_batch=s.max_batch,
            max_delay_s=s.max_delay_ms / 1000,
            max_queue=s.max_queue,
            observer=self.observer(card, backend) if self.observer else None,
            name=card.name,
            inflight=backend.inflight,
            stack=not backend.stages,
            lone_inline=self.lone_inline,
        )
        batcher.start()
        self.models[card.name] = ModelRuntime(card, backend, batcher, default=not self.models)

    async def load_all(self) -> None:
        """Load, warm up and start every bundle (in a thread: the caller stays responsive).

        A failure is kept in ``error`` and raised again."""
        try:
            for bundle in self.settings.model_dirs:
                backend, sizes = await asyncio.to_thread(self._load_one, str(bundle))
                self._register(backend)
                log.info("model %s ready (warm-up batch sizes %s)", backend.card.name, sizes)
            self.ready = True
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.settled.set()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop every batcher: queued windows are finished (or failed after ``timeout_s``)."""
        # at once, not one after another: ``timeout_s`` is the budget of the whole stop
        await asyncio.gather(*(r.batcher.stop(timeout_s) for r in self.models.values()))


def check_bundles(settings: Settings) -> list[ModelCard]:
    """Read every configured card now, so a wrong path fails at start-up, not later."""
    if not settings.model_dirs:
        raise ValueError("PANNS_MODELS names no bundle directory")
    return [read_card(path) for path in settings.model_dirs]
