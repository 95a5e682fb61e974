"""Infinite, resumable, rank-sharded batch samplers for training.

``BalancedSampler`` is the PANNs balanced sampler: the classes are visited round-robin in a
freshly shuffled order each round, and each visit takes the next clip of that class from its own
shuffled list (reshuffled when used up). Rare classes are thereby seen as often as common ones.
``RandomSampler`` shuffles all clips once per epoch.

Both yield lists of dataset indices forever (the trainer decides when to stop) and are
deterministic functions of their seed: every permutation is drawn from a generator seeded by
``(seed, what, epoch)``, so the state is a handful of counters. Under DDP every rank computes
the same global batch of ``batch_size * world_size`` indices and keeps its own contiguous slice.

A ``DataLoader`` pulls batches ahead of the training loop, so the sampler remembers its state
after each recent batch: ``state_dict(batch=n)`` is the state after the first ``n`` batches,
i.e. where a resumed run must continue once the trainer has consumed ``n`` of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

# How many recent per-batch states are remembered (far more than any loader prefetches).
_HISTORY = 1024
_ROUND, _CLASS, _EPOCH = 0, 1, 2


def _permutation(seed: int, kind: int, key: int, epoch: int, items: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, kind, key, epoch]))
    return items[rng.permutation(len(items))]


class _Sampler:
    """Shared machinery: sharding, the batch counter and the state history."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches = 0
        self._history: deque[tuple[int, dict[str, Any]]] = deque(maxlen=_HISTORY)

    def _next_index(self) -> int:
        raise NotImplementedError

    def _counters(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_counters(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def next_batch(self) -> list[int]:
        """This rank's slice of the next global batch."""
        total = self.batch_size * self.world_size
        indices = [self._next_index() for _ in range(total)]
        self.batches += 1
        self._history.append((self.batches, self._snapshot()))
        lo = self.rank * self.batch_size
        return indices[lo : lo + self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "seed": self.seed,
            "batches": self.batches,
            "global_batch": self.batch_size * self.world_size,
            **self._counters(),
        }

    def state_dict(self, batch: int | None = None) -> dict[str, Any]:
        """The state after ``batch`` batches (default: after every batch drawn so far)."""
        if batch is None or batch == self.batches:
            return self._snapshot()
        for drawn, state in self._history:
            if drawn == batch:
                return dict(state)
        raise KeyError(f"no sampler state remembered for batch {batch} (now at {self.batches})")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same seed and global batch size)."""
        if state["kind"] != type(self).__name__:
            raise ValueError(f"cannot load a {state['kind']} state into {type(self).__name__}")
        global_batch = self.batch_size * self.world_size
        if state["seed"] != self.seed or state["global_batch"] != global_batch:
            raise ValueError(
                f"sampler state was taken with seed {state['seed']} and global batch "
                f"{state['global_batch']}; this sampler has {self.seed} and {global_batch}"
            )
        self.batches = int(state["batches"])
        self._set_counters(state)
        self._history.clear()


class RandomSampler(_Sampler):
    """Plain shuffling: a new permutation of every clip each epoch."""

    def __init__(
        self, num_clips: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        if num_clips <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.num_clips = num_clips
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        return _permutation(self.seed, _EPOCH, 0, self.epoch, np.arange(self.num_clips))

    def _next_index(self) -> int:
        if self.position == self.num_clips:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        index = int(self._order[self.position])
        self.position += 1
        return index

    def _counters(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def _set_counters(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()


class BalancedSampler(_Sampler):
    """Class-balanced sampling over a multi-hot target matrix ``(clips, classes)``.

    Classes without any clip are never drawn. A clip with several labels sits in the list of
    each of its classes.
    """

    def __init__(
        self,
        targets: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        targets = np.asarray(targets)
        if targets.ndim != 2 or targets.shape[0] == 0:
            raise ValueError(
                f"targets must be a non-empty (clips, classes) matrix, got shape {targets.shape}"
            )
        clips, classes = np.nonzero(targets > 0.5)  # one pass, sorted by clip
        order = np.argsort(classes, kind="stable")
        bounds = np.searchsorted(classes[order], np.arange(targets.shape[1] + 1))
        self.members = [clips[order[bounds[k] : bounds[k + 1]]] for k in range(targets.shape[1])]
        self.classes = np.array([k for k, m in enumerate(self.members) if len(m)], dtype=np.int64)
        if not len(self.classes):
            raise ValueError("no clip has a positive label: nothing to balance")
        self.round = 0
        self.round_position = 0
        self.class_epoch = np.zeros(len(self.members), dtype=np.int64)
        self.class_position = np.zeros(len(self.members), dtype=np.int64)
        self._round_order = self._order_of_round()
        self._class_order: dict[int, np.ndarray] = {}

    def _order_of_round(self) -> np.ndarray:
        return _permutation(self.seed, _ROUND, 0, self.round, self.classes)

    def _clips_of(self, k: int) -> np.ndarray:
        if k not in self._class_order:
            epoch = int(self.class_epoch[k])
            self._class_order[k] = _permutation(self.seed, _CLASS, k, epoch, self.members[k])
        return self._class_order[k]

    def _next_index(self) -> int:
        if self.round_position == len(self.classes):
            self.round, self.round_position = self.round + 1, 0
            self._round_order = self._order_of_round()
        k = int(self._round_order[self.round_position])
        self.round_position += 1
        if self.class_position[k] == len(self.members[k]):
            self.class_epoch[k] += 1
            self.class_position[k] = 0
            self._class_order.pop(k, None)
        index = int(self._clips_of(k)[self.class_position[k]])
        self.class_position[k] += 1
        return index

    def _counters(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "round_position": self.round_position,
            "class_epoch": self.class_epoch.tolist(),
            "class_position": self.class_position.tolist(),
        }

    def _set_counters(self, state: dict[str, Any]) -> None:
        if len(state["class_epoch"]) != len(self.members):
            raise ValueError(
                f"sampler state has {len(state['class_epoch'])} classes, "
                f"the data set has {len(self.members)}"
            )
        self.round, self.round_position = int(state["round"]), int(state["round_position"])
        self.class_epoch = np.asarray(state["class_epoch"], dtype=np.int64)
        self.class_position = np.asarray(state["class_position"], dtype=np.int64)
        self._round_order = self._order_of_round()
        self._class_order.clear()


def make_sampler(
    kind: str,
    targets: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> BalancedSampler | RandomSampler:
    """``kind`` is ``"balanced"`` or ``"random"``."""
    if kind == "balanced":
        return BalancedSampler(targets, batch_size, seed=seed, rank=rank, world_size=world_size)
    if kind == "random":
        return RandomSampler(len(targets), batch_size, seed=seed, rank=rank, world_size=world_size)
    raise ValueError(f"unknown sampler {kind!r}; choose 'balanced' or 'random'")
