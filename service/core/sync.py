"""``SyncTagger``: a ``Tagger`` on a background event loop, for scripts and notebooks.

``SyncTagger.map`` pushes many files through the same batcher at once, so their windows share
batches.

    from service import SyncTagger
    with SyncTagger("models/cnn14") as tagger:
        print(tagger.tag("dog.wav").top[:3])
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from service.core.inputs import Source, as_input
from service.core.results import DetectResult, EmbedResult, FileResult, TagResult
from service.core.tagger import Bundles, Tagger

T = TypeVar("T")


class SyncTagger:
    """A ``Tagger`` on a background event loop, for code that is not async."""

    def __init__(self, bundles: Bundles = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.tagger = Tagger(bundles, **kwargs)
        try:
            self._call(self.tagger.start())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def tag(self, source: Source, **kwargs: Any) -> TagResult:
        return self._call(self.tagger.tag(source, **kwargs))

    def embed(self, source: Source, **kwargs: Any) -> EmbedResult:
        return self._call(self.tagger.embed(source, **kwargs))

    def detect(self, source: Source, **kwargs: Any) -> DetectResult:
        return self._call(self.tagger.detect(source, **kwargs))

    def map(
        self, sources: Iterable[Source], task: str = "tag", concurrency: int = 8, **kwargs: Any
    ) -> Iterator[FileResult]:
        """Results for many sources, in order, ``concurrency`` in flight (sharing batches).

        A bad source yields a result with ``error`` set; it never stops the others."""
        method = getattr(self.tagger, f"{task}_many")
        pending: deque[Any] = deque()
        for index, source in enumerate(sources):
            item = as_input(source, index)
            pending.append(asyncio.run_coroutine_threadsafe(method([item], **kwargs), self._loop))
            if len(pending) >= concurrency:
                yield pending.popleft().result()[0]
        for future in pending:
            yield future.result()[0]

    def close(self) -> None:
        if self._loop.is_running():
            if hasattr(self, "tagger"):
                self._call(self.tagger.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SyncTagger:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
