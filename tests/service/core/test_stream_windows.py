"""The stream's windows (``service.core.stream``): what one message may cost the event loop."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import numpy as np

from service.core.stream import LiveStream, StreamConfig
from service.core.tagger import Tagger
from tests.service.conftest import RATE, settings_for


def test_a_message_completing_many_windows_copies_out_only_those_the_stream_keeps(
    tagger_bundle: Path,
) -> None:
    """``window_s=60, hop_s=0.05``: 61 s of audio in one message completes 21 windows of 60 s
    (7.7 MB each). The stream submits what it has room for (2) and keeps the latest waiting;
    the 18 in between are skipped. Only those 3 may be copied out: every one of the 21 was
    (161 MB per message, and the event loop's time to fill them), hundreds with more audio."""

    async def main() -> None:
        async with Tagger(settings=settings_for(tagger_bundle, max_batch=1)) as tagger:
            config = StreamConfig(sample_rate=RATE, window_s=60.0, hop_s=0.05)
            stream = LiveStream(tagger.models.get(), config, min_hop_s=0.05, timeout_s=60)
            data = np.zeros(RATE * 61, np.int16).tobytes()
            tracemalloc.start()
            try:
                stream.feed(data)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            await stream.close()
        assert stream.skipped_total == 18
        window_mb = 60 * RATE * 4 / 1e6
        # the decoded message (7.8 MB) and 3 windows; the old way held all 21 at once
        assert peak / 1e6 < 7.8 + 5 * window_mb, peak / 1e6

    asyncio.run(main())
