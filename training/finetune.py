r"""Fine-tune a pretrained PANNs checkpoint on your own labelled sounds.

    python -m training.finetune --checkpoint Cnn14_mAP=0.431.pth --data sounds/ --out runs/mine \
        [--arch Cnn14] [--freeze-base] [--steps 1000] [--eval held_out/] [--holdout 0.1]

``--data`` is a folder per label (``sounds/<label>/*.wav``) or a ``path,labels`` CSV. The model
is built with one output per label of the data (sorted label names), every weight except the
classification head (``fc_audioset``, or ``att_block`` for the attention model) is loaded from
the checkpoint, and ``--freeze-base`` trains the head alone. Without ``--eval`` a seeded
``--holdout`` fraction of the clips is kept aside for the periodic evaluation.

The run directory is a training run (``config.json``, ``log.jsonl``, ``checkpoints/``) plus
``labels.txt``; the checkpoints carry ``arch``, ``model_args`` and ``labels`` so
``python -m model_export --checkpoint RUN/checkpoints/best.pth --out BUNDLE`` exports a bundle
that the service serves with these labels. Any flag of ``python -m training.train`` applies;
the defaults here differ in ``--steps 1000 --lr 1e-4 --eval-every 200`` and ``--arch`` (the
checkpoint's). Folder and CSV
clips are zero-padded or cut to ``--clip-seconds`` (10): with ``--crop-seconds`` set it near
the real clip length, or most crops of short clips are padding.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig, add_config_arguments, config_from_args
from training.models import default_args
from training.rundir import RunDir
from training.runtime import init_distributed, shutdown_distributed
from training.trainer import Trainer, open_data

log = logging.getLogger(__name__)

FINETUNE_DEFAULTS: dict[str, Any] = {"steps": 1000, "lr": 1e-4, "eval_every": 200}


class Subset:
    """Some clips of a labelled data set, keeping its labels, targets and sample rate."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = list(dataset.labels)
        self.sample_rate = dataset.sample_rate
        self.targets = np.asarray(dataset.targets)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset[int(self.indices[index])]


def split_holdout(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any | None]:
    """A seeded random split into (train, held-out); no held-out set for fraction 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {fraction}")
    count = len(dataset)
    held = math.ceil(fraction * count) if fraction > 0 else 0
    if held == 0:
        return dataset, None
    if count - held < 1:
        raise ValueError(f"{count} clips are too few to hold out {fraction:.0%}")
    order = np.random.default_rng([seed, 17]).permutation(count)
    return Subset(dataset, np.sort(order[held:])), Subset(dataset, np.sort(order[:held]))


def checkpoint_base(checkpoint: str, given: str | None) -> tuple[str, dict[str, Any]]:
    """From one read of the checkpoint: its architecture (``--arch``, else its ``arch`` entry,
    else its official file name) and its create_model overrides minus the class count."""
    from training.checkpoints import CheckpointError, read_checkpoint
    from training.checkpoints.loading import resolve_arch

    state = read_checkpoint(checkpoint)
    try:
        arch = resolve_arch(Path(checkpoint), state, given)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    args = dict(state.get("model_args") or {})
    args.pop("classes_num", None)
    return arch, args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="pretrained checkpoint (.pth)")
    parser.add_argument("--data", required=True, help="label folders or path,labels CSV")
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="fraction held out for evaluation when --eval is not given",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    shown = {**FINETUNE_DEFAULTS, "arch": "the checkpoint's: its 'arch' entry or official name"}
    add_config_arguments(
        parser, skip=("train", "pretrained", "pretrained_skip_head", "model_args"), defaults=shown
    )
    return parser


def build_config(args: argparse.Namespace, arch: str, model_args: dict[str, Any]) -> TrainConfig:
    """The fine-tuning defaults, then the flags given (``--arch`` is already in ``arch``)."""
    base = TrainConfig(
        **{
            **FINETUNE_DEFAULTS,
            "arch": arch,
            "train": str(args.data),
            "pretrained": str(args.checkpoint),
            "pretrained_skip_head": True,
            "model_args": model_args,
        }
    )
    vars(args).pop("arch", None)
    return config_from_args(args, base)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    arch, model_args = checkpoint_base(args.checkpoint, getattr(args, "arch", None))
    rate = {**default_args(arch), **model_args}["sample_rate"]
    clip = getattr(args, "clip_seconds", TrainConfig.clip_seconds)
    data = open_data(str(args.data), rate, clip)
    config = build_config(args, arch, {**model_args, "classes_num": len(data.labels)})
    if config.eval:
        train_set: Any = data
        eval_set = open_data(config.eval, rate, clip, data.labels)
    else:
        train_set, eval_set = split_holdout(data, args.holdout, config.seed)
    info = init_distributed(config.device)
    try:
        trainer = Trainer(config, info, train_set=train_set, eval_set=eval_set, labels=data.labels)
        if args.resume:
            trainer.resume()
        result = trainer.fit()
        if info.is_main:
            run = RunDir(config.out)
            (run.root / "labels.txt").write_text("\n".join(data.labels) + "\n")
            best = run.best if run.best.is_file() else run.latest
            print(json.dumps({**result, "checkpoint": str(best), "labels": data.labels}))
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
