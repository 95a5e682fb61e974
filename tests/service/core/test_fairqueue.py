"""The batcher's fair queue on its own: pure bookkeeping, an explicit clock."""

from __future__ import annotations

import math

import numpy as np

from service.core.fairqueue import FairQueue, Ticket


def ticket(at: float, *lengths: int) -> Ticket:
    return Ticket([np.zeros(n, np.float32) for n in lengths], at)


def test_round_robin_within_a_length_and_depth() -> None:
    q: FairQueue[Ticket] = FairQueue()
    a, b = ticket(0.0, 8, 8, 8, 8), ticket(1.0, 8, 5)
    q.put(a)
    q.put(b)
    assert q.depth == 6
    assert q.take_round_robin(8, 3) == [(a, 0), (b, 0), (a, 1)]
    assert q.take_round_robin(8, 9) == [(a, 2), (a, 3)]
    assert (q.depth, a.queued, b.queued) == (1, 0, 1)
    assert q.take_round_robin(5, 9) == [(b, 1)] and q.depth == 0


def test_pick_full_first_then_oldest_after_the_delay_or_when_told() -> None:
    q: FairQueue[Ticket] = FairQueue()
    assert q.pick(0.0, max_batch=2, max_delay_s=1.0, cut_now=True) == (None, math.inf)
    q.put(ticket(0.0, 5))
    q.put(ticket(0.5, 8, 8))
    assert q.pick(0.6, max_batch=2, max_delay_s=1.0, cut_now=False) == (8, 0.0)  # full
    q.take_round_robin(8, 2)
    assert q.pick(0.6, max_batch=2, max_delay_s=1.0, cut_now=False) == (None, 0.4)
    assert q.pick(0.6, max_batch=2, max_delay_s=1.0, cut_now=True) == (5, 0.0)
    assert q.pick(1.0, max_batch=2, max_delay_s=1.0, cut_now=False) == (5, 0.0)


def test_remove_takes_every_queued_window_of_a_ticket() -> None:
    q: FairQueue[Ticket] = FairQueue()
    a, b = ticket(0.0, 8, 5, 8), ticket(1.0, 8)
    q.put(a)
    q.put(b)
    q.take_round_robin(8, 1)
    assert q.remove(a) == 2 and q.remove(a) == 0
    assert q.depth == 1 and q.take_round_robin(8, 4) == [(b, 0)]
    assert q.pick(2.0, max_batch=1, max_delay_s=0, cut_now=True) == (None, math.inf)


def test_take_shortest_finishes_the_smallest_requests_first() -> None:
    q: FairQueue[Ticket] = FairQueue()
    long, short, mid = ticket(0.0, *[8] * 5), ticket(1.0, 5, 8), ticket(2.0, 8, 8, 8)
    for t in (long, short, mid):
        q.put(t)
    # short's next window is 5 samples long: that batch holds only 5-sample windows
    assert q.take_shortest(4) == [(short, 0)]
    assert q.take_shortest(4) == [(short, 1), (mid, 0), (mid, 1), (mid, 2)]
    assert q.take_shortest(4) == [(long, 0), (long, 1), (long, 2), (long, 3)]
    assert q.take_shortest(4) == [(long, 4)] and q.take_shortest(4) == [] and q.depth == 0
