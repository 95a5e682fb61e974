"""The batcher's queue: windows of many requests, grouped by length, handed out fairly.

Only windows of one length can share a batch, so the queue keeps one group per window length.
Within a group, a batch takes windows round-robin across the requests that queued them (the
rotation carries on from one batch to the next), so one request's 60,000 windows cannot starve
a small request queued behind them. A drain instead takes the requests with the fewest windows
left first, so that as many requests as possible complete. Pure bookkeeping: no clock, no
asyncio, no threads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np


@dataclass(eq=False)
class Ticket:
    """One request's windows; compared and hashed by identity."""

    windows: Sequence[np.ndarray]
    enqueued: float
    queued: int = field(default=0, init=False)  # windows still in the queue (not yet taken)
    seq: int = field(default=0, init=False)  # arrival order


T = TypeVar("T", bound=Ticket)


@dataclass(eq=False)
class _Group(Generic[T]):
    """The queued windows of one length: a lane of window indices per request."""

    lanes: dict[T, deque[int]] = field(default_factory=dict)  # in arrival order
    turn: deque[T] = field(default_factory=deque)  # round-robin order
    size: int = 0

    @property
    def oldest(self) -> float:
        return next(iter(self.lanes)).enqueued


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._groups: dict[int, _Group[T]] = {}
        self._seq = 0
        self.depth = 0  # queued windows, all groups

    def put(self, ticket: T) -> None:
        """Queue every window of the ticket (a request's windows may differ in length)."""
        self._seq += 1
        ticket.seq = self._seq
        for index, window in enumerate(ticket.windows):
            group = self._groups.setdefault(window.shape[0], _Group())
            lane = group.lanes.get(ticket)
            if lane is None:
                lane = group.lanes[ticket] = deque()
                group.turn.append(ticket)
            lane.append(index)
            group.size += 1
        ticket.queued = len(ticket.windows)
        self.depth += ticket.queued

    def remove(self, ticket: T) -> int:
        """Take the ticket's queued windows out; returns how many there were."""
        if not ticket.queued:
            return 0
        for length, group in list(self._groups.items()):
            lane = group.lanes.pop(ticket, None)
            if lane is not None:
                group.turn.remove(ticket)
                self._shrink(length, group, len(lane))
        removed, ticket.queued = ticket.queued, 0
        self.depth -= removed
        return removed

    def pick(
        self, now: float, *, max_batch: int, max_delay_s: float, cut_now: bool
    ) -> tuple[int | None, float]:
        """The window length to cut a batch of now, or None and the seconds until one is due.

        A full group is due at once (the one whose oldest window waited longest); otherwise
        the group with the oldest window, once it has waited ``max_delay_s`` or when
        ``cut_now`` (the engine is idle) says not to wait for company.
        """
        if not self._groups:
            return None, math.inf
        heads = [(g.oldest, length, g.size) for length, g in self._groups.items()]
        full = [h for h in heads if h[2] >= max_batch]
        oldest, length, _ = min(full or heads)
        wait = oldest + max_delay_s - now
        if full or cut_now or wait <= 0:
            return length, 0.0
        return None, wait

    def take_round_robin(self, length: int, count: int) -> list[tuple[T, int]]:
        """Up to ``count`` windows of one length, one per request in turn."""
        group = self._groups[length]
        batch: list[tuple[T, int]] = []
        while len(batch) < count and group.turn:
            ticket = group.turn.popleft()
            lane = group.lanes[ticket]
            batch.append((ticket, lane.popleft()))
            if lane:
                group.turn.append(ticket)
            else:
                del group.lanes[ticket]
        self._taken(length, group, batch)
        return batch

    def take_shortest(self, count: int) -> list[tuple[T, int]]:
        """Up to ``count`` windows, requests with the fewest queued windows first (a drain).

        The batch's length is that of the next window of the request with the fewest left;
        the rest of the batch comes from the other requests of that length, shortest first.
        """
        if not self._groups:
            return []
        key = self._drain_key
        first = min((t for g in self._groups.values() for t in g.lanes), key=key)
        _, length = min((g.lanes[first][0], n) for n, g in self._groups.items() if first in g.lanes)
        group = self._groups[length]
        batch: list[tuple[T, int]] = []
        for ticket in sorted(group.lanes, key=key):
            lane = group.lanes[ticket]
            while lane and len(batch) < count:
                batch.append((ticket, lane.popleft()))
            if not lane:
                del group.lanes[ticket]
                group.turn.remove(ticket)
            if len(batch) == count:
                break
        self._taken(length, group, batch)
        return batch

    @staticmethod
    def _drain_key(ticket: Ticket) -> tuple[int, int]:
        return ticket.queued, ticket.seq

    def _taken(self, length: int, group: _Group[T], batch: list[tuple[T, int]]) -> None:
        for ticket, _ in batch:
            ticket.queued -= 1
        self.depth -= len(batch)
        self._shrink(length, group, len(batch))

    def _shrink(self, length: int, group: _Group[T], count: int) -> None:
        group.size -= count
        if not group.size:
            del self._groups[length]
