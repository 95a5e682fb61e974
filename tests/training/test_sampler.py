"""Balanced and random samplers: coverage, shuffling, sharding and exact resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from training.sampler import BalancedSampler, RandomSampler, make_sampler


def _skewed_targets() -> np.ndarray:
    """Class 0 on 90 clips, class 1 on 8, class 2 on 2, class 3 on none; clip 5 has 0 and 1."""
    targets = np.zeros((100, 4), dtype=np.float32)
    targets[:90, 0] = 1
    targets[90:98, 1] = 1
    targets[98:, 2] = 1
    targets[5, 1] = 1
    return targets


def _draw(sampler: BalancedSampler | RandomSampler, batches: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it) for _ in range(batches)]


def test_balanced_sampler_draws_every_class_equally() -> None:
    targets = _skewed_targets()
    sampler = BalancedSampler(targets, batch_size=3, seed=0)
    batches = _draw(sampler, 100)
    # Three non-empty classes visited round-robin: every batch of 3 holds one clip per class,
    # and the empty class 3 is never drawn.
    per_class = Counter()
    for batch in batches:
        assert len(batch) == 3
        drawn = {int(np.flatnonzero(targets[i])[-1]) for i in batch if i != 5}
        per_class.update(drawn)
        assert all(k in (0, 1, 2) for k in drawn)
    counts = [sum(1 for b in batches for i in b if targets[i, k]) for k in range(4)]
    assert counts[3] == 0
    assert min(counts[:3]) >= 100  # the 2-clip class is drawn as often as the 90-clip class
    # Within a class every clip is used once before any repeats (shuffled epochs).
    rare = [i for b in batches for i in b if i in (98, 99)]
    for start in range(0, len(rare) - 1, 2):
        assert sorted(rare[start : start + 2]) == [98, 99]


def test_balanced_sampler_shuffles_clips_within_a_class() -> None:
    targets = _skewed_targets()
    targets[5, 1] = 0  # single-label: every draw below 90 is a visit to class 0
    sampler = BalancedSampler(targets, batch_size=1, seed=3)
    draws = [b[0] for b in _draw(sampler, 600) if b[0] < 90]
    first, second = draws[:90], draws[90:180]
    assert sorted(first) == sorted(second) == list(range(90))  # each clip once per epoch
    assert first != sorted(first) and first != second  # shuffled, differently each epoch


@pytest.mark.parametrize("kind", ["balanced", "random"])
def test_state_dict_resumes_with_the_same_next_batch(kind: str) -> None:
    targets = _skewed_targets()
    a = make_sampler(kind, targets, batch_size=7, seed=11)
    batches = _draw(a, 40)
    b = make_sampler(kind, targets, batch_size=7, seed=11)
    b.load_state_dict(a.state_dict(batch=25))  # as if the trainer had consumed 25 batches
    assert _draw(b, 15) == batches[25:]
    assert b.state_dict() == a.state_dict()


def test_state_dict_rejects_other_settings() -> None:
    targets = _skewed_targets()
    a = BalancedSampler(targets, batch_size=4, seed=1)
    _draw(a, 2)
    with pytest.raises(ValueError, match="seed"):
        BalancedSampler(targets, batch_size=4, seed=2).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="RandomSampler"):
        RandomSampler(100, batch_size=4, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(KeyError, match="batch 99"):
        a.state_dict(batch=99)


@pytest.mark.parametrize("kind", ["balanced", "random"])
def test_ranks_get_disjoint_slices_of_the_global_batch(kind: str) -> None:
    targets = _skewed_targets()
    single = _draw(make_sampler(kind, targets, batch_size=8, seed=5), 10)
    shards = [
        _draw(make_sampler(kind, targets, batch_size=4, seed=5, rank=r, world_size=2), 10)
        for r in range(2)
    ]
    for step in range(10):
        assert shards[0][step] + shards[1][step] == single[step]


def test_random_sampler_covers_each_epoch_once() -> None:
    sampler = RandomSampler(10, batch_size=5, seed=0)
    first, second = _draw(sampler, 2), _draw(sampler, 2)
    assert sorted(first[0] + first[1]) == list(range(10))
    assert sorted(second[0] + second[1]) == list(range(10))
    assert first != second


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="no clip has a positive label"):
        BalancedSampler(np.zeros((5, 3)), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        RandomSampler(5, batch_size=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("weighted", np.ones((5, 1)), 2)
