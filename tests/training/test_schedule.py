"""The learning rate of every step: warm-up, constant / cosine / linear, and their checks."""

from __future__ import annotations

import itertools
import math

import pytest

from training.config import TrainConfig
from training.schedule import lr_at


def _lrs(steps: int = 10, **options: object) -> list[float]:
    config = TrainConfig.from_dict({"steps": steps, "lr": 1e-3, **options})
    return [lr_at(step, config) for step in range(steps)]


def test_default_is_the_papers_constant_rate() -> None:
    assert TrainConfig().lr_schedule == "constant" and TrainConfig().warmup_steps == 0
    assert _lrs() == [1e-3] * 10


def test_warmup_rises_linearly_to_the_rate() -> None:
    assert _lrs(warmup_steps=4)[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_runs_from_the_rate_to_min_lr_at_the_last_step(schedule: str) -> None:
    lrs = _lrs(12, lr_schedule=schedule, warmup_steps=1, min_lr=1e-5)  # decay: steps 1-11
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(lrs[1:]))
    middle = 1e-5 + (1e-3 - 1e-5) * 0.5  # halfway through the decay, both are at the middle
    assert lrs[6] == pytest.approx(middle)
    if schedule == "cosine":
        assert lrs[3] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.2)))


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"lr_schedule": "exponential"}, "lr_schedule must be one of constant, cosine, linear"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr": 1.0}, "min_lr must be in"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_bad_values_are_refused(options: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TrainConfig.from_dict(options)
