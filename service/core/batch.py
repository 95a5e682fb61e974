"""What the batcher's batches are made of: requests' windows, their results, who is told.

Plain types and helpers shared by the batcher and whatever carries its results on (the engine
server, the wire format, streams); no queueing policy and no threads here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np

from service.core.errors import BatcherStopped, DeadlineExceeded
from service.core.fairqueue import Ticket

# A stacked (B, L) batch, or its B windows of L samples (``stack=False``)
InferInput = np.ndarray | list[np.ndarray]
InferFn = Callable[[InferInput], dict[str, np.ndarray]]


def drop_reason(future: asyncio.Future[list[WindowResult]]) -> str:
    """Why a request's queued windows were dropped (the observer's ``dropped`` reason):
    "deadline", "cancelled", "failed" (the engine failed another window of the request) or
    "stopped" (``stop(timeout)`` gave up on them)."""
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    return "stopped" if isinstance(exc, BatcherStopped) else "failed"


def as_exception(error: BaseException) -> Exception:
    """What a request fails with when its batch failed: ``CancelledError`` or ``SystemExit``
    raised inside ``infer`` would read as the caller's own cancellation or exit."""
    if isinstance(error, Exception):
        return error
    return RuntimeError(f"inference failed: {error!r}")


class BatchObserver(Protocol):
    """Batcher events, e.g. for metrics. Optional too: ``batch_stacked(size, stack_s)``,
    called when a batch has been stacked (``stack=False``: cut) and waits for the engine: on
    the event loop, or in the thread that stacked it (the stacking thread, or an engine
    thread just before its run)."""

    def batch_done(self, size: int, compute_s: float, waits: list[float]) -> None: ...
    def depth_changed(self, depth: int) -> None: ...
    def dropped(self, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class WindowResult:
    outputs: dict[str, np.ndarray]  # kind -> this window's row of the batch output
    queue_s: float  # from submit until the engine started its batch
    compute_s: float  # the engine's time for the whole batch (the batcher's stacking excluded)
    batch_size: int
    batch_id: int


@dataclass(eq=False)
class QueuedRequest(Ticket):
    """One ``submit``: its windows, its result future and how many windows are still to come."""

    future: asyncio.Future[list[WindowResult]]
    deadline: float
    results: list[WindowResult | None] = field(init=False)
    pending: int = field(init=False)
    timer: asyncio.TimerHandle | None = field(default=None, init=False)  # the deadline's

    def __post_init__(self) -> None:
        self.results = [None] * len(self.windows)
        self.pending = len(self.windows)


Batch = list[tuple[QueuedRequest, int]]  # (request, index of the window in the request)


@dataclass
class RunTimes:
    """What the engine's batches took: moving averages, for ``Retry-After`` and for whether
    a lone window is short enough to run on the event loop."""

    batches: int = 0  # batches run so far (the last one's number)
    compute_s: float = 0.0  # any batch
    lone_s: float = math.inf  # a batch of one window; unknown until one ran

    def record(self, size: int, compute_s: float) -> int:
        """Count a batch of ``size`` windows that took ``compute_s``; return its number."""
        self.batches += 1
        self.compute_s = 0.8 * self.compute_s + 0.2 * compute_s
        if size == 1:
            lone = self.lone_s
            self.lone_s = compute_s if lone == math.inf else 0.8 * lone + 0.2 * compute_s
        return self.batches


def fail_batch(batch: Batch, exc: BaseException) -> None:
    """Fail every request of ``batch`` not done yet with ``exc``."""
    for request, _ in batch:
        if not request.future.done():
            request.future.set_exception(exc)


def hand_out(
    batch: Batch, outputs: dict[str, np.ndarray], waits: list[float], compute: float, batch_id: int
) -> None:
    """Give each window of ``batch`` its row of ``outputs``; a request whose last window this
    was gets its results (one done meanwhile, e.g. cancelled or timed out, gets nothing)."""
    for row, (request, index) in enumerate(batch):
        if request.future.done():
            continue
        rows = {kind: out[row] for kind, out in outputs.items()}
        request.results[index] = WindowResult(rows, waits[row], compute, len(batch), batch_id)
        request.pending -= 1
        if not request.pending:
            request.future.set_result(cast(list[WindowResult], request.results))
