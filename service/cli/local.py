"""``panns tag --bundle``: the same core as the service, in this process, no server.

The records are those the REST API would answer (``service.present.tag_json``). The
service's per-request bounds protect a server from its clients; here the user tags their
own files, so windows per file and the queue are not capped (the per-file audio limit,
``PANNS_MAX_AUDIO_S``, still holds, and ``--concurrency`` bounds the memory in use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.cli.common import FatalError, Json, TagParams, error_record, record
from service.core.errors import InvalidParameters, NotReady, UnknownModel
from service.core.inputs import AudioInput
from service.core.pipeline import WindowSpec
from service.core.tagger import Tagger
from service.core.tasks import TagOptions
from service.present import error_info, tag_json

# The service's request bounds, lifted for one's own files (see the module doc).
LOCAL_OVERRIDES: dict[str, Any] = {"warmup": "none", "max_windows": 10**9, "max_queue": 10**9}


class LocalTagger:
    """A ``Tagger`` on the bundles in ``bundles`` (comma-separated; None: ``PANNS_MODELS``)."""

    def __init__(self, bundles: str | None, params: TagParams, timeout_s: float) -> None:
        paths = None if bundles is None else [p for p in bundles.split(",") if p.strip()]
        self.tagger = Tagger(paths, **LOCAL_OVERRIDES)
        self.params, self.timeout_s = params, timeout_s
        self.options = TagOptions(params.top_k, params.threshold, params.aggregate)
        self.window = WindowSpec(params.window_s, params.hop_s)

    async def __aenter__(self) -> LocalTagger:
        try:
            await self.tagger.start()
        except Exception as exc:  # a wrong path, a bad card, a runtime that will not load
            await self.tagger.close()
            raise FatalError(f"cannot load the models: {exc}") from exc
        try:
            self.check()
        except BaseException:
            await self.tagger.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.tagger.close()

    def check(self) -> None:
        """Model and parameters are good for every file, or nothing is tagged."""
        try:
            runtime = self.tagger.model(self.params.model)
            self.options.check(runtime.card)
            self.window.samples(runtime.card, self.tagger.settings.min_hop_s)
        except (UnknownModel, InvalidParameters, NotReady) as exc:
            raise FatalError(exc.message) from exc

    async def tag(self, path: Path, data: bytes) -> Json:
        try:
            results = await self.tagger.tag_many(
                [AudioInput(path.name, data=data)],
                model=self.params.model,
                window=self.window,
                options=self.options,
                timeout_s=self.timeout_s,
            )
        except Exception as exc:  # queue, deadline, engine: this file fails, the run goes on
            return error_record(path, **error_info(exc))
        return record(path, tag_json(results[0], self.params.scores))
