r"""Train a zoo model with the PANNs recipe.

    python -m training.train --arch Cnn14 --train train.h5 --eval eval.h5 --steps 600000 \
        --out runs/cnn14 [--batch-size 32] [--lr 1e-3] [--sampler balanced] [--mixup-alpha 1]
    torchrun --nproc-per-node 8 -m training.train ...      # DistributedDataParallel
    python -m training.train --out runs/cnn14 --resume [--steps N]   # continue exactly

The run directory gets ``config.json`` (the resolved configuration), ``log.jsonl`` (one line
per evaluation: loss, learning rate, mAP, mean AUC, d-prime, throughput), TensorBoard event
files (``tensorboard --logdir runs``; see :mod:`training.tracking`), ``per_class.csv`` (the
latest evaluation per class), and ``checkpoints/latest.pth`` and ``checkpoints/best.pth``
(highest evaluation mAP; a tie goes to the later); ``python -m training.report RUN_DIR...``
plots and compares runs.
``--lr-schedule``, ``--warmup-steps`` and ``--grad-clip`` change the recipe (default: the
paper's constant lr, no warm-up, no clipping). Checkpoints are the official format plus what
resuming needs: ``model``, ``iteration``, ``optimizer``, ``sampler``, ``config``, ``arch``,
``model_args``, ``labels`` (when the classes are not AudioSet's), ``rank_states`` (RNGs),
``scaler`` and ``best_mAP``; they hold only tensors and plain Python values, so
``torch.load(..., weights_only=True)`` reads them. Under DDP only rank 0 writes, every rank
reads the checkpoint to resume (multi-node runs need a shared run directory).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from training.checkpoints import read_checkpoint
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.rundir import RunDir
from training.runtime import init_distributed, shutdown_distributed
from training.trainer import Trainer, is_audioset, model_sample_rate, open_data

# The training loop moved to training.trainer; its names stay importable from here.
__all__ = [
    "Trainer",
    "build_parser",
    "is_audioset",
    "main",
    "model_sample_rate",
    "open_data",
    "resolve_config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/latest.pth; other "
        "flags override its saved config (e.g. a larger --steps)",
    )
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < saved config (with --resume) < command-line flags."""
    if not args.resume:
        if not getattr(args, "train", ""):
            raise SystemExit("--train is required (or --resume with --out of an existing run)")
        return config_from_args(args)
    out = getattr(args, "out", None)
    if out is None:
        raise SystemExit("--resume needs --out RUN_DIR")
    run = RunDir(out)
    if not run.latest.is_file():
        raise SystemExit(f"--resume: {run.latest} does not exist")
    saved = read_checkpoint(run.latest)["config"]
    return config_from_args(args, TrainConfig.from_dict(saved))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    info = init_distributed(config.device)
    try:
        trainer = Trainer(config, info)
        if args.resume:
            trainer.resume()
        result = trainer.fit()
        if info.is_main:
            print(json.dumps(result))
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
