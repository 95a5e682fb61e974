"""The ``Tagger``: tag, embed and detect with one or more bundles, no HTTP involved.

``Tagger`` is async (for servers: every door of the service runs on one); ``SyncTagger``
(``service.core.sync``) runs one on a background event loop for scripts and notebooks.

    from service import Tagger
    async with Tagger("models/cnn14") as tagger:
        print((await tagger.tag("dog.wav")).top[:3])
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from service.core.card import ModelCard, OutputKind
from service.core.errors import SHUTTING_DOWN, BatcherStopped, DeadlineExceeded, TimedOut
from service.core.heap import LARGE_REQUEST_BYTES, release_memory
from service.core.inputs import AudioInput, Source, as_input
from service.core.mixdown import heap
from service.core.models import ModelRuntime, Models, ObserverFactory, check_bundles
from service.core.pipeline import FileWork, Limits, WindowSpec, infer, prepare
from service.core.results import DetectResult, EmbedResult, FileResult, TagResult, TensorResult
from service.core.tasks import (
    DetectOptions,
    TagOptions,
    detect_result,
    embed_result,
    tag_result,
    tensor_result,
)
from service.settings import Settings, usable_cores

if TYPE_CHECKING:
    from service.core.remote import EngineClient

R = TypeVar("R", bound=FileResult)
# Inputs whose decode is a plain copy are decoded on the event loop up to this many bytes
# in all (about 30 s of 32 kHz 16-bit mono: well under a millisecond of conversion).
INLINE_DECODE_BYTES = 2 << 20
Build = Callable[[FileWork, float], R]
Bundles = str | Path | Iterable[str | Path] | None
# Set inside ``Tagger.admit``: the work of this task is counted already.
_ADMITTED: ContextVar[bool] = ContextVar("panns_admitted", default=False)


def make_settings(
    bundles: Bundles, settings: Settings | None, overrides: dict[str, Any]
) -> Settings:
    """``settings`` (default: the environment's) with ``bundles`` and ``overrides`` applied."""
    values = (settings or Settings()).model_dump()
    if bundles is not None:
        paths = [bundles] if isinstance(bundles, str | Path) else list(bundles)
        values["models"] = ",".join(str(p) for p in paths)
    values.update(overrides)
    return Settings(**values)


class FileEvents(Protocol):
    """What a tagger reports of each input it prepared (the service counts them)."""

    def file_done(self, model: str, seconds: float) -> None: ...
    def file_failed(self, code: str) -> None: ...


class Tagger:
    """Models loaded from bundles, each behind a batcher that every caller shares."""

    def __init__(
        self,
        bundles: Bundles = None,
        *,
        settings: Settings | None = None,
        observer: ObserverFactory | None = None,
        events: FileEvents | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = make_settings(bundles, settings, overrides)
        self.models = Models(self.settings, observer)
        self.events = events
        self._engine: EngineClient | None = None  # the engine connection of a front process
        # Decoding threads, one per core (shared among the front processes): more only
        # trade the GIL with the event loop more often (context switches), no throughput.
        fronts = self.settings.worker_count if self.settings.engine_socket else 1
        self._decoders = ThreadPoolExecutor(
            max(1, usable_cores() // fronts), thread_name_prefix="decode"
        )
        # Requests admitted and not yet answered: ``close`` waits for them before stopping
        # the batchers, and admits no more once it has begun.
        self._active = 0
        self._closing = False
        self._idle: asyncio.Event | None = None  # made by ``close`` (on its event loop)

    async def start(self) -> Tagger:
        """Read every card, then load and warm up every model; raise if one fails."""
        check_bundles(self.settings)
        await self.load()
        return self

    async def load(self) -> None:
        """Load the models here, or, with ``engine_socket`` set, reach the engine process's."""
        if not self.settings.engine_socket:
            await self.models.load_all()
            return
        from service.core.remote import connect_models

        try:
            self._engine = await connect_models(self.models, self.settings.engine_socket)
        except Exception as exc:
            self.models.error = f"{type(exc).__name__}: {exc}"
            raise

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, let those admitted already finish (their upload may still be
        arriving), finish every queued window, then stop; after ``timeout_s`` in all, what is
        left fails with ``BatcherStopped``."""
        started = time.monotonic()
        self._closing = True
        if self._active:
            if self._idle is None:
                self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
        if timeout_s is not None:
            timeout_s = max(0.0, timeout_s - (time.monotonic() - started))
        await self.models.stop(timeout_s)
        if self._engine is not None:
            await self._engine.close()
        self._decoders.shutdown(wait=False)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request's work from here to its end, so that ``close`` waits for it
        (a server enters this before reading the request's body); once ``close`` has begun,
        refuse it with ``BatcherStopped``. Nested in another ``admit``, it does nothing."""
        if _ADMITTED.get():
            yield
            return
        if self._closing:
            raise BatcherStopped(SHUTTING_DOWN)
        self._active += 1
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)
            self._active -= 1
            if not self._active and self._idle is not None:
                self._idle.set()

    async def __aenter__(self) -> Tagger:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_audio_s, s.max_request_audio_s, s.max_windows, s.min_hop_s)

    def model(self, name: str | None = None) -> ModelRuntime:
        """The served model ``name`` (default: the first bundle's)."""
        return self.models.get(name)

    async def tag_many(
        self,
        sources: Sequence[Source],
        *,
        model: str | None = None,
        window: WindowSpec | None = None,
        options: TagOptions | None = None,
        timeout_s: float | None = None,
    ) -> list[TagResult]:
        """Tag every source as one request; a bad source fails only its own result."""
        runtime, opts = self.model(model), options or TagOptions()
        opts.check(runtime.card)
        return await self.run(
            runtime,
            sources,
            lambda w, t: tag_result(w, runtime.card, opts, t),
            window,
            timeout_s,
            kinds=["clipwise"],
        )

    async def embed_many(
        self,
        sources: Sequence[Source],
        *,
        model: str | None = None,
        window: WindowSpec | None = None,
        timeout_s: float | None = None,
    ) -> list[EmbedResult]:
        runtime = self.model(model)
        runtime.require("embedding", "embed")
        return await self.run(
            runtime, sources, embed_result, window, timeout_s, kinds=["embedding"]
        )

    async def detect_many(
        self,
        sources: Sequence[Source],
        *,
        model: str | None = None,
        window: WindowSpec | None = None,
        options: DetectOptions | None = None,
        timeout_s: float | None = None,
    ) -> list[DetectResult]:
        runtime = self.model(model)
        opts = options or DetectOptions(max_values=self.settings.max_response_values)
        runtime.require("framewise", "detect")
        opts.factor(runtime.card)  # parameter errors before any decoding
        return await self.run(
            runtime,
            sources,
            lambda w, t: detect_result(w, runtime.card, opts, t),
            window,
            timeout_s,
            kinds=["framewise"],
        )

    async def tensors_many(
        self,
        sources: Sequence[Source],
        *,
        model: str | None = None,
        kinds: Sequence[OutputKind] | None = None,
        window: WindowSpec | None = None,
        timeout_s: float | None = None,
    ) -> list[TensorResult]:
        """The model's outputs of ``kinds`` (default: all it has) per source, in one pass."""
        runtime = self.model(model)
        wanted = list(kinds) if kinds is not None else list(runtime.backend.kinds.values())
        for kind in wanted:
            runtime.require(kind, "the call")
        return await self.run(
            runtime,
            sources,
            lambda w, t: tensor_result(w, runtime.card, wanted, t),
            window,
            timeout_s,
            kinds=wanted,
        )

    async def tag(self, source: Source, **kwargs: Any) -> TagResult:
        """Tag one source; raise its error instead of returning it."""
        return _one(await self.tag_many([source], **kwargs))

    async def embed(self, source: Source, **kwargs: Any) -> EmbedResult:
        return _one(await self.embed_many([source], **kwargs))

    async def detect(self, source: Source, **kwargs: Any) -> DetectResult:
        return _one(await self.detect_many([source], **kwargs))

    async def run(
        self,
        runtime: ModelRuntime,
        sources: Sequence[Source],
        build: Build[R],
        window: WindowSpec | None = None,
        timeout_s: float | None = None,
        kinds: Sequence[OutputKind] | None = None,
    ) -> list[R]:
        """Decode and cut (in a thread), batch and infer, then ``build`` each result from the
        outputs of ``kinds`` (None: every output; a front asks its engine for these only)."""
        with self.admit(), self._deadline_is_504():
            started = time.monotonic()
            deadline = started + (timeout_s or self.settings.timeout_s)
            items = [as_input(s, i) for i, s in enumerate(sources)]
            works = await self._prepare(items, runtime.card, window or WindowSpec(), deadline)
            self._report(runtime.name, works)
            try:
                await self.infer(works, runtime, deadline, kinds)
                return [build(w, started) for w in works]
            finally:
                if sum(w.decoded.waveform.nbytes for w in works if w.decoded) > LARGE_REQUEST_BYTES:
                    works.clear()
                    self._release_memory()

    def _release_memory(self) -> None:
        """malloc_trim in a decoding thread (it walks the heap: not on the event loop); not
        at all once ``close`` shut them down (it must not replace the request's outcome)."""
        with contextlib.suppress(RuntimeError):  # cannot schedule new futures after shutdown
            asyncio.get_running_loop().run_in_executor(self._decoders, release_memory)

    async def _prepare(
        self, items: list[AudioInput], card: ModelCard, window: WindowSpec, deadline: float
    ) -> list[FileWork]:
        """Decode and cut in a thread, or right here when that is only a short copy: a
        thread hand-off (a wake-up and two GIL switches) costs more than converting
        ``INLINE_DECODE_BYTES`` of 16-bit PCM, and adds to every lone request's latency."""
        sizes = [item.quick_bytes(card.sample_rate) for item in items]
        quick = [size for size in sizes if size is not None]
        # a front decodes into its arena: the windows then reach the engine without a copy
        alloc = heap if self._engine is None else self._engine.waveform
        if len(quick) == len(sizes) and sum(quick) <= INLINE_DECODE_BYTES:
            return prepare(items, card, window, self.limits, alloc, deadline)
        try:
            decoding = asyncio.get_running_loop().run_in_executor(
                self._decoders, prepare, items, card, window, self.limits, alloc, deadline
            )
        except RuntimeError:  # cannot schedule new futures after shutdown: ``close`` ran
            if not self._closing:
                raise
            raise BatcherStopped(SHUTTING_DOWN) from None
        return await decoding

    def _report(self, model: str, works: list[FileWork]) -> None:
        if self.events is None:
            return
        for work in works:
            if work.error is not None:
                self.events.file_failed(work.error.code)
            elif work.decoded is not None:
                self.events.file_done(model, work.decoded.duration_s)

    async def infer(
        self,
        works: list[FileWork],
        runtime: ModelRuntime,
        deadline: float,
        kinds: Sequence[OutputKind] | None = None,
    ) -> None:
        await infer(works, runtime, deadline, kinds)  # the batcher enforces the deadline

    @contextlib.contextmanager
    def _deadline_is_504(self) -> Iterator[None]:
        """The deadline passed (waiting to decode, or in the batcher): ``TimedOut``."""
        try:
            yield
        except DeadlineExceeded as exc:
            raise TimedOut(
                f"not done within the deadline of {self.settings.timeout_s:g} s (PANNS_TIMEOUT_S)"
            ) from exc


def _one(results: list[R]) -> R:
    result = results[0]
    if result.error is not None:
        raise result.error
    return result


__all__ = ["AudioInput", "Tagger"]
