"""The training configuration: one dataclass, defaults from the PANNs paper.

Every field has a command-line flag of the same name (``--batch-size`` for ``batch_size``;
booleans get ``--amp/--no-amp``). Flags override the defaults, or, with ``--resume``, the
configuration saved in the run directory. The resolved configuration is written to
``RUN_DIR/config.json`` and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """What ``python -m training.train`` does. Paper defaults unless noted."""

    # Architecture: any name of training.models.list_models().
    arch: str = field(default="Cnn14", metadata={"help": "model architecture"})
    # Training data: an HDF5 pack, a folder per label or a path,labels CSV.
    train: str = field(default="", metadata={"help": "training data (pack .h5, folder or CSV)"})
    # Held-out data for the periodic evaluation; empty: no evaluation.
    eval: str = field(default="", metadata={"help": "evaluation data (same forms as --train)"})
    # Run directory: config.json, log.jsonl, checkpoints/{latest,best}.pth.
    out: str = field(default="runs/train", metadata={"help": "run directory"})
    # Number of optimisation steps (iterations) to train for in total.
    steps: int = field(default=1_000_000, metadata={"help": "total training steps"})
    # Clips per step and per rank, after mixup (the loader reads twice as many with mixup).
    batch_size: int = field(default=32, metadata={"help": "clips per step and rank"})
    # Adam learning rate.
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    # Learning-rate schedule after the warm-up: "constant" (the paper's), or "cosine" /
    # "linear" decay from lr at the end of the warm-up to min_lr at the last step.
    lr_schedule: str = field(default="constant", metadata={"help": " | ".join(LR_SCHEDULES)})
    # Linear warm-up from lr / warmup_steps to lr over this many steps (0 = none).
    warmup_steps: int = field(default=0, metadata={"help": "learning-rate warm-up steps"})
    # Where the cosine or linear decay ends.
    min_lr: float = field(default=0.0, metadata={"help": "final lr of cosine/linear decay"})
    # Clip the global gradient L2 norm to this value before each step (0 = no clipping).
    grad_clip: float = field(default=0.0, metadata={"help": "max gradient norm, 0 = off"})
    # Adam beta1 and beta2.
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    # Adam epsilon.
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    # L2 weight decay (the paper uses none).
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    # AMSGrad variant of Adam, as the reference recipe.
    amsgrad: bool = field(default=True, metadata={"help": "AMSGrad Adam"})
    # "balanced" (classes drawn equally, the paper's) or "random" (plain shuffling).
    sampler: str = field(default="balanced", metadata={"help": "balanced | random"})
    # Beta(alpha, alpha) mixup coefficient; 0 disables mixup.
    mixup_alpha: float = field(default=1.0, metadata={"help": "mixup alpha, 0 = off"})
    # Folder and CSV data: clips are zero-padded or cut to this length (packs keep their own).
    clip_seconds: float = field(default=10.0, metadata={"help": "folder/CSV clip length"})
    # Train on random crops of this many seconds instead of whole clips (0 = whole clips).
    # Not in the paper: it makes CPU training of small models (tests, demos) fast; the
    # models pool globally over time, so they still score whole clips at inference.
    crop_seconds: float = field(default=0.0, metadata={"help": "random-crop length, 0 = off"})
    # The model's SpecAugment (two time stripes of up to 64 frames, two of up to 8 mel bins).
    # Turn it off for crops of a second or two, which those stripes would mostly erase.
    spec_augment: bool = field(default=True, metadata={"help": "SpecAugment in the model"})
    # Evaluate, log and checkpoint every this many steps (and at the last step).
    eval_every: int = field(default=2000, metadata={"help": "steps between evaluations"})
    # Clips per evaluation batch.
    eval_batch_size: int = field(default=32, metadata={"help": "evaluation batch size"})
    # "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda[:N]"})
    # Automatic mixed precision on CUDA (ignored on CPU).
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA"})
    # AMP dtype: bfloat16 needs no loss scaling; float16 uses a GradScaler.
    amp_dtype: str = field(default="bfloat16", metadata={"help": "bfloat16 | float16"})
    # DataLoader worker processes (0 = load in the main process).
    workers: int = field(default=4, metadata={"help": "data loader workers"})
    # TensorBoard event files in the run directory (beside log.jsonl, which is always written).
    tensorboard: bool = field(default=True, metadata={"help": "TensorBoard event files"})
    # Seed of the sampler, mixup, crops and torch (dropout, SpecAugment, initialisation).
    seed: int = field(default=1234, metadata={"help": "random seed"})
    # Official (or our) checkpoint to initialise the weights from.
    pretrained: str = field(default="", metadata={"help": "initial weights (.pth)"})
    # Load the pretrained weights except the classification head (fine-tuning).
    pretrained_skip_head: bool = field(default=False, metadata={"help": "skip the head"})
    # Train only the classification head; the base's weights and BatchNorm stats stay fixed.
    freeze_base: bool = field(default=False, metadata={"help": "train the head only"})
    # create_model overrides, e.g. {"classes_num": 10}.
    model_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "create_model overrides (JSON)"}
    )

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.validate()

    def validate(self) -> None:
        """Clear errors for values that cannot work."""
        checks = [
            (self.steps >= 0, "steps must be >= 0"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.lr > 0, "lr must be positive"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}",
            ),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (self.sampler in ("balanced", "random"), "sampler must be 'balanced' or 'random'"),
            (self.mixup_alpha >= 0, "mixup_alpha must be >= 0"),
            (self.crop_seconds >= 0, "crop_seconds must be >= 0"),
            (self.clip_seconds > 0, "clip_seconds must be positive"),
            (self.eval_every > 0, "eval_every must be positive"),
            (self.eval_batch_size > 0, "eval_batch_size must be positive"),
            (self.amp_dtype in ("bfloat16", "float16"), "amp_dtype: bfloat16 or float16"),
            (self.workers >= 0, "workers must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _json_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _field_type(f: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[f.name]


def add_config_arguments(
    parser: argparse.ArgumentParser,
    skip: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One flag per field; unset flags stay absent from the namespace (argparse.SUPPRESS).

    ``defaults``: what a command uses instead of the dataclass defaults, shown in the help
    (a string value is shown as it is, e.g. ``{"arch": "the checkpoint's"}``).
    """
    shown = dict(defaults or {})
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        default = shown.get(f.name, _default(f))
        helptext = f"{f.metadata.get('help', '')} (default: {default})"
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, metavar=("B1", "B2"), **common)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(flag, type=_json_dict, **common)
        else:
            parser.add_argument(flag, type=kind if kind in (int, float) else str, **common)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (or the defaults) updated with the flags that were given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    if base is None:
        return TrainConfig(**given)
    return dataclasses.replace(base, **given)
