"""Initial weights for training and fine-tuning: pretrained loading and a frozen base."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# The classification head of the zoo models: every class-dependent parameter lives here
# (fc_audioset for tagging models and DecisionLevelMax/Avg, att_block for DecisionLevelAtt).
HEAD_PREFIXES = ("fc_audioset.", "att_block.")


def is_head(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES)


def load_pretrained(model: nn.Module, path: str | Path, *, skip_head: bool) -> list[str]:
    """Copy the checkpoint's weights into ``model``; returns the keys left at initialisation.

    Every non-head key must match by name and shape, by the rule strict loading and export
    follow (a ``(1,)`` tensor fills a 0-d one, e.g. an old ``num_batches_tracked``); a
    checkpoint of another architecture is an error that lists the keys and shapes, not a
    silent partial load. With ``skip_head`` the head is left as initialised, which is how a
    527-class checkpoint seeds a model with another number of classes.
    """
    from training.checkpoints import read_checkpoint  # official or ours; always has "model"
    from training.checkpoints.loading import state_dict_conflicts

    source = read_checkpoint(path)["model"]
    target = model.state_dict()
    wanted = {k: v for k, v in target.items() if not (skip_head and is_head(k))}
    given = {k: v for k, v in source.items() if not (skip_head and is_head(k))}
    problems = state_dict_conflicts(wanted, given)
    if problems:
        hint = "" if skip_head else "\n  (fine-tuning to new classes needs skip_head)"
        raise ValueError(
            f"{path} does not fit {type(model).__name__}:\n  " + "\n  ".join(problems) + hint
        )
    with torch.no_grad():
        for key, value in wanted.items():
            value.copy_(given[key].reshape(value.shape))
    skipped = sorted(set(target) - set(wanted))
    log.info(
        "loaded %d tensors from %s; %d head tensors left initialised",
        len(wanted),
        path,
        len(skipped),
    )
    return skipped


def freeze_base(model: nn.Module) -> list[str]:
    """Stop gradients for everything but the head; returns the trainable parameter names."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_head(name))
        if is_head(name):
            trainable.append(name)
    if not trainable:
        raise ValueError(
            f"{type(model).__name__} has no head parameters ({', '.join(HEAD_PREFIXES)}) to train"
        )
    return trainable


def set_train_mode(model: nn.Module, frozen_base: bool) -> None:
    """``model.train()``; with a frozen base its BatchNorms keep their running statistics.

    Dropout, SpecAugment and mixup stay on (they follow the top-level training flag).
    """
    model.train()
    if not frozen_base:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head(name + "."):
            module.eval()
