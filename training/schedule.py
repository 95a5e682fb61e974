"""The learning rate of every step: an optional linear warm-up, then a schedule.

The rate is a pure function of the step number, so resuming a run (or changing ``--steps``
with ``--resume``) needs no scheduler state: the step count in the checkpoint is enough.
"""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of the ``step``-th optimisation step (0-based).

    Warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then
    ``constant`` keeps ``lr`` (the PANNs recipe); ``cosine`` and ``linear`` decay from ``lr``
    to ``min_lr`` over the remaining steps up to ``config.steps``.
    """
    lr, warmup = config.lr, config.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return lr
    span = max(config.steps - warmup - 1, 1)
    progress = min((step - warmup) / span, 1.0)
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return config.min_lr + (lr - config.min_lr) * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
