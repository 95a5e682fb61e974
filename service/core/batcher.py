"""Dynamic batcher: windows from all requests share batches run by one inference thread.

Knows no HTTP and no ONNX Runtime: it is given ``infer(batch) -> {kind: array}``.

- Batches: only windows of the same length share one; within a length, a batch takes windows
  round-robin across the requests that queued them (``fairqueue``), so a huge request cannot
  starve a small one behind it.
- When to cut: at once when the engine is idle (a lone request does not wait for company);
  while a batch runs, the next one forms until it holds ``max_batch`` windows, its oldest window
  has waited ``max_delay_s`` or the engine goes idle. ``cut_when_idle=False`` restores the
  older policy (full or ``max_delay_s``, never earlier), kept for comparison in benchmarks.
- Pipelining: stacking (``np.stack``, the one copy of the windows) overlaps the running batch
  in its own thread, which queues the stacked batch for the engine threads (one waits at most);
  a batch cut while an engine thread is free is stacked by that thread, one hand-off fewer.
  ``pipeline=False``: one batch at a time. ``stack=False``: ``infer`` gets the windows as a
  list (an engine that copies them into its own pinned buffer anyway).
- ``lone_inline`` (the engine process, whose loop serves nothing else): a lone window (nothing
  in flight or queued) runs on the loop's thread, two thread wake-ups fewer, once lone runs
  are known to be short (``LONE_INLINE_MAX_S``).
- In flight: ``inflight`` engine threads run up to that many batches at once (2 on a GPU: the
  next batch's host->device copy overlaps the current batch's kernels; ``infer`` must then be
  thread-safe). Batches may finish out of order; each window's result goes to its own place.
  "Idle" (cut at once) still means no batch handed to the engine, so batch fill does not drop.
- The engine threads are the batcher's own (``engine_threads``): one callback back per batch.
- Admission: a request is queued whole or refused: ``TooManyWindows`` if it holds more windows
  than the queue (``max_queue``) ever can, ``QueueFull`` when they do not fit now.
- Deadlines: ``submit`` enforces its deadline itself (a timer per request, no timeout scope)
  and raises ``DeadlineExceeded``; a caller that is cancelled (client gone) drops its queued
  windows as "cancelled". ``enqueue`` is the same without a coroutine: it returns the future.
- Shutdown: ``stop()`` refuses new work and drains, requests with the fewest windows left
  first; ``stop(timeout)`` fails whatever is left after ``timeout`` with ``BatcherStopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.core.batch import (
    Batch,
    BatchObserver,
    InferFn,
    InferInput,
    QueuedRequest,
    RunTimes,
    WindowResult,
    as_exception,
    drop_reason,
    fail_batch,
    hand_out,
)
from service.core.engine_threads import EngineThreads
from service.core.errors import (
    SHUTTING_DOWN,
    BatcherStopped,
    DeadlineExceeded,
    QueueFull,
    TooManyWindows,
)
from service.core.fairqueue import FairQueue

log = logging.getLogger("service.core.batcher")
# Batches up to this size are stacked on the event loop (about 0.3 ms of copying, less than a
# thread hand-off and back); larger ones by a free engine thread, else the stacking thread.
INLINE_STACK_BYTES = 4 << 20
# ``lone_inline`` runs a lone window on the loop only while lone runs average at most this: it
# saves two thread wake-ups (~0.1-0.3 ms), but the loop reads no submits and sends no answers
# meanwhile: not for a model whose batch of one takes 60 ms.
LONE_INLINE_MAX_S = 0.005


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        name: str = "model",
        cut_when_idle: bool = True,
        pipeline: bool = True,
        inflight: int = 1,
        stack: bool = True,
        lone_inline: bool = False,
    ) -> None:
        if inflight < 1:
            raise ValueError(f"inflight must be at least 1, not {inflight}")
        self.infer, self.max_batch, self.max_delay_s = infer, max_batch, max_delay_s
        self.max_queue, self.observer, self.name = max_queue, observer, name
        self.cut_when_idle, self.pipeline, self.inflight = cut_when_idle, pipeline, inflight
        self.stack, self.lone_inline = stack, lone_inline
        self._queue: FairQueue[QueuedRequest] = FairQueue()
        self._live: dict[QueuedRequest, None] = {}  # submitted, not yet returned
        self._closing = self._gave_up = False
        self._handed = 0  # batches handed to the engine threads and not yet finished
        self._threads: EngineThreads[Batch, InferInput, dict[str, np.ndarray]] = EngineThreads(
            inflight, f"infer-{name}", self._finish
        )
        self._runs = RunTimes()
        self._wakeup: asyncio.Event | None = None  # for the forming task: something changed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stacker = ThreadPoolExecutor(1, thread_name_prefix=f"stack-{name}")

    @property
    def depth(self) -> int:
        """Windows queued, not yet cut into a batch."""
        return self._queue.depth

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._threads.start(self._loop)
        self._tasks = [asyncio.create_task(self._form_loop(), name=f"batcher-{self.name}")]

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new work and run every queued window, shortest requests first. With
        ``timeout`` (seconds), give up then: every request still waiting (queued, stacked or
        running) fails with ``BatcherStopped``, without waiting for the running batch."""
        self._closing = True
        self._wake()
        done: set[asyncio.Task[None]] = set()
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("the batcher's forming task failed", exc_info=task.exception())
        if pending:
            self._gave_up = True  # a batch that ends from now on reports nothing
            self._abandon()
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        self._stacker.shutdown(wait=not pending, cancel_futures=True)
        # a batch still waiting for a thread is dropped (its requests failed); joined only
        # when none runs a batch (none does unless ``stop(timeout)`` gave up on it)
        self._threads.stop(join=self._handed == 0)

    def retry_after(self) -> int:
        batches = math.ceil(self.depth / self.max_batch)
        return max(1, math.ceil(batches * max(self._runs.compute_s, 0.01)))

    async def submit(
        self, windows: Sequence[np.ndarray], deadline: float, kinds: Sequence[str] | None = None
    ) -> list[WindowResult]:
        """Queue windows (all or none) and wait for their results, in order, until ``deadline``
        (``time.monotonic()``), then raise ``DeadlineExceeded``; a cancelled caller's windows
        not yet cut are dropped. ``kinds`` matters only across processes (``RemoteQueue``)."""
        return await self.enqueue(windows, deadline)

    def enqueue(
        self, windows: Sequence[np.ndarray], deadline: float
    ) -> asyncio.Future[list[WindowResult]]:
        """``submit`` without a coroutine: queue windows (all or none, or raise) and return the
        future of their results. It fails with ``DeadlineExceeded`` at ``deadline``;
        cancelling it drops the windows not yet cut. For a caller that handles many requests
        per event-loop turn (the engine process): no task and no timeout scope per request."""
        self._admit(len(windows))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[WindowResult]] = loop.create_future()
        if not windows:
            future.set_result([])
            return future
        now = time.monotonic()
        if not deadline > now:  # NaN too: a deadline that cannot be kept
            self._dropped("deadline", len(windows))
            raise DeadlineExceeded("the deadline passed before the windows were queued")
        request = QueuedRequest(windows, now, future, deadline)
        self._queue.put(request)
        self._live[request] = None
        if math.isfinite(deadline):
            request.timer = loop.call_later(deadline - now, self._expire, request)
        future.add_done_callback(lambda _: self._settled(request))
        self._depth_changed()
        self._wake()
        return future

    def _admit(self, count: int) -> None:
        if self._closing or self._wakeup is None:
            raise BatcherStopped(SHUTTING_DOWN)
        if count > self.max_queue:
            raise TooManyWindows(count, self.max_queue)
        if self.depth + count > self.max_queue:
            raise QueueFull(self.retry_after())

    def _expire(self, request: QueuedRequest) -> None:
        if not request.future.done():
            self._remove(request, "deadline")  # now, not a loop turn later in ``_settled``
            msg = "the deadline passed before every window ran"
            request.future.set_exception(DeadlineExceeded(msg))

    def _settled(self, request: QueuedRequest) -> None:
        """The request's future is done: its windows still queued go, counted by why."""
        if request.timer is not None:
            request.timer.cancel()
        self._live.pop(request, None)
        future = request.future
        if future.cancelled() or future.exception() is not None:
            self._remove(request, drop_reason(future))

    def _remove(self, request: QueuedRequest, reason: str) -> None:
        removed = self._queue.remove(request)
        if removed:
            self._depth_changed()
            self._dropped(reason, removed)

    def _unsettled(self, batch: Batch) -> Batch:
        """The batch without the windows of requests already done (cancelled, say, in the
        loop turn that queued them: ``_settled`` runs a turn later), counted as dropped."""
        dead = [request for request, _ in batch if request.future.done()]
        for request in dead:
            self._dropped(drop_reason(request.future), 1)
        return [(r, index) for r, index in batch if not r.future.done()] if dead else batch

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _depth_changed(self) -> None:
        if self.observer:
            self.observer.depth_changed(self.depth)

    def _dropped(self, reason: str, count: int) -> None:
        if self.observer and count:
            self.observer.dropped(reason, count)

    def _abandon(self) -> None:
        """Fail every live request with BatcherStopped (``stop`` ran out of time)."""
        for request in list(self._live):
            self._remove(request, "stopped")
            if not request.future.done():
                request.future.set_exception(BatcherStopped("the service stopped first"))

    # The forming task: cut batches, stack them (in the stacking thread), hand them to the
    # engine threads.

    async def _form_loop(self) -> None:
        # at most one stacked batch waits for a free engine thread; without pipelining, none
        limit = self.inflight if self.pipeline else 0
        while (batch := await self._next_batch()) is not None:
            if self._hand(batch):
                await self._until(lambda: self._handed <= limit)
            del batch  # held by the stacking or engine thread now, and only there
        await self._until(lambda: self._handed == 0)  # drained: the last batches end

    async def _until(self, ready: Callable[[], bool]) -> None:
        assert self._wakeup is not None
        while not ready():
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _next_batch(self) -> Batch | None:
        assert self._wakeup is not None
        while True:
            if self._closing:
                taken = self._queue.take_shortest(self.max_batch)
                batch = self._unsettled(taken)
                self._depth_changed()
                if batch or not taken:
                    return batch or None
                continue
            length, wait = self._queue.pick(
                time.monotonic(),
                max_batch=self.max_batch,
                max_delay_s=self.max_delay_s,
                cut_now=self.cut_when_idle and self._handed == 0,
            )
            if length is not None:
                batch = self._unsettled(self._queue.take_round_robin(length, self.max_batch))
                self._depth_changed()
                if batch:
                    return batch
                continue
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: no task per wait, no loop turn before it waits
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wait == math.inf else wait):
                    await self._wakeup.wait()

    def _hand(self, batch: Batch) -> bool:
        """Hand a batch on, stacked here (a small one), by a free engine thread before its run,
        or by the stacking thread, which queues it for the engine threads itself. False when
        it failed to stack (its requests failed, the batcher goes on)."""
        windows = [request.windows[index] for request, index in batch]
        if self.stack and len(windows) > 1 and sum(w.nbytes for w in windows) > INLINE_STACK_BYTES:
            self._handed += 1
            if self._handed <= self.inflight:  # nothing to overlap with: one fewer hand-off
                self._threads.submit(batch, self.infer, windows, self._stack)
            else:
                self._stacker.submit(self._stack_and_hand, batch, windows)
            return True
        try:
            stacked = self._stack(windows)
        except Exception as exc:  # e.g. MemoryError: this batch fails, the batcher goes on
            log.exception("stacking a batch of %d failed", len(batch))
            fail_batch(batch, exc)
            return False
        self._handed += 1
        if self._inline(batch):
            assert self._loop is not None
            # a turn later: the writes this turn queued (the last batch's answers) go first
            self._loop.call_soon(self._run_here, batch, stacked)
        else:
            self._threads.submit(batch, self.infer, stacked)
        return True

    def _inline(self, batch: Batch) -> bool:
        """``lone_inline``: one window, nothing else in flight or queued (queued work never
        runs here: the loop must turn between batches), and lone runs known to be short."""
        lone = self._handed == 1 and len(batch) == 1 and not self.depth
        return self.lone_inline and lone and self._runs.lone_s <= LONE_INLINE_MAX_S

    def _run_here(self, batch: Batch, stacked: InferInput) -> None:
        """A lone window on the loop's own thread (the engine process's, serving nothing else)."""
        start = time.monotonic()
        try:
            outcome: dict[str, np.ndarray] | BaseException = self.infer(stacked)
        except Exception as exc:  # fails this batch, as in an engine thread
            outcome = exc
        self._finish(batch, outcome, start, time.monotonic())

    def _stack_and_hand(self, batch: Batch, windows: list[np.ndarray]) -> None:
        """In the stacking thread: stack, then queue it for the engine threads. A failure goes
        back to the loop (raised here, the executor would keep it: handed for ever)."""
        try:
            stacked = self._stack(windows)
            del windows
        except Exception as exc:  # e.g. MemoryError: this batch fails, the batcher goes on
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it
                self._loop.call_soon_threadsafe(self._stack_failed, batch, exc)
            return
        self._threads.submit(batch, self.infer, stacked)

    def _stack(self, windows: InferInput) -> InferInput:
        """A batch as ``infer`` takes it: (B, L), a lone window as a view, else a copy;
        ``stack=False``: the windows as they are (the engine copies them itself)."""
        assert isinstance(windows, list)
        start = time.monotonic()
        if not self.stack:
            return self._stacked(windows, start)
        if len(windows) == 1:
            return self._stacked(np.ascontiguousarray(windows[0], np.float32)[None], start)
        return self._stacked(np.stack(windows), start)

    def _stack_failed(self, batch: Batch, exc: Exception) -> None:
        """On the loop: the stacking thread could not stack ``batch`` (e.g. MemoryError)."""
        log.error("stacking a batch of %d failed", len(batch), exc_info=exc)
        fail_batch(batch, exc)
        self._handed -= 1
        self._wake()

    def _stacked(self, batch: InferInput, start: float) -> InferInput:
        """Tell the observer a batch is ready for the engine (stacked since ``start``)."""
        if (stacked_hook := getattr(self.observer, "batch_stacked", None)) is not None:
            stacked_hook(len(batch), time.monotonic() - start)
        return batch

    # The engine threads run each batch and hand its outcome back to the event loop.

    def _finish(
        self, batch: Batch, outcome: dict[str, np.ndarray] | BaseException, start: float, end: float
    ) -> None:
        """On the loop: a batch ended; each window's row goes to its request. Whatever goes
        wrong here, the forming task is told the engine is free (or it would wait forever)."""
        try:
            if self._gave_up:  # ``stop(timeout)`` already failed these requests
                return
            if isinstance(outcome, BaseException):
                log.error("inference failed for a batch of %d", len(batch), exc_info=outcome)
                fail_batch(batch, as_exception(outcome))
                return
            try:
                self._deliver(batch, outcome, start, end - start)
            except Exception as exc:  # e.g. an engine that returned too few rows
                log.exception("handing out the results of a batch of %d failed", len(batch))
                fail_batch(batch, exc)
        finally:
            self._handed -= 1
            # after the results: a failed request's ``_settled`` drops its windows before the
            # forming task could cut them
            self._wake()

    def _deliver(
        self, batch: Batch, outputs: dict[str, np.ndarray], start: float, compute: float
    ) -> None:
        waits = [start - request.enqueued for request, _ in batch]
        hand_out(batch, outputs, waits, compute, self._runs.record(len(batch), compute))
        if self.observer:
            self.observer.batch_done(len(batch), compute, waits)
