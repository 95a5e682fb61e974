r"""Evaluate a checkpoint on held-out data: mAP, mean AUC, d-prime and per-class AP.

    python -m training.evaluate --checkpoint RUN/checkpoints/best.pth --data eval.h5 \
        [--out DIR] [--plot] [--json] [--batch-size 32] [--device auto]

Prints the AudioSet-style summary (mAP, mean AUC, d-prime; ``--json``: as one JSON line) and
saves it as ``summary.json`` with the per-class table ``per_class.csv`` in ``--out`` (default:
``RUN/eval-<data name>/`` for a checkpoint in ``RUN/checkpoints/``, else
``<checkpoint>-eval-<data name>/`` beside it); ``--plot`` adds ``per_class.png``, the sorted
per-class AP with the best and worst 20 classes named. The per-class table has one row per
model output class (``index, label, ap, auc, positives``), NaN-free: classes that cannot be
scored get empty cells.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.metrics import Scores, class_rows, evaluate_scores, write_class_table

log = logging.getLogger(__name__)


def collate_padded(batch: Sequence[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(waveform, target)`` pairs, zero-padding waveforms to the longest of the batch."""
    waves = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w, _ in batch]
    length = max(w.shape[-1] for w in waves)
    out = torch.zeros(len(waves), length)
    for i, w in enumerate(waves):
        out[i, : w.shape[-1]] = w
    targets = torch.stack([torch.as_tensor(np.asarray(t, dtype=np.float32)) for _, t in batch])
    return out, targets


def autocast_for(device: torch.device, amp: bool, dtype: str) -> Any:
    """``torch.autocast`` on CUDA when ``amp``; a no-op context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))
    return nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Clipwise scores of ``model`` (eval mode) over ``dataset``: (targets, scores)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_padded,
        generator=torch.Generator(),
    )
    was_training = model.training
    model.eval()
    targets, scores = [], []
    try:
        for wave, target in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
            with autocast_for(device, amp, amp_dtype):
                out = model(wave.to(device, non_blocking=True))["clipwise_output"]
            scores.append(out.float().cpu().numpy())
            targets.append(target.numpy())
    finally:
        model.train(was_training)
    if not scores:
        raise ValueError("the evaluation data set is empty")
    return np.concatenate(targets), np.concatenate(scores)


def evaluate_model(model: nn.Module, dataset: Dataset[Any], **kwargs: Any) -> Scores:
    """:func:`predict` then :func:`training.metrics.evaluate_scores`."""
    targets, scores = predict(model, dataset, **kwargs)
    if targets.shape[1] != scores.shape[1]:
        raise ValueError(f"the data has {targets.shape[1]} classes, the model {scores.shape[1]}")
    return evaluate_scores(targets, scores)


def model_labels(checkpoint: dict[str, Any], classes_num: int) -> tuple[list[str], list[str]]:
    """The model's classes in output order as (keys matching data labels, display names).

    A checkpoint's own ``labels`` serve as both; a 527-class model without them is AudioSet:
    its keys are the mids (as packs label their columns) and its names the display names.
    """
    if checkpoint.get("labels"):
        labels = [str(x) for x in checkpoint["labels"]]
        return labels, labels
    if classes_num == 527:
        from training.audioset import audioset_labels

        table = audioset_labels()
        return [x.mid for x in table], [x.display_name for x in table]
    names = [f"class_{i}" for i in range(classes_num)]
    return names, names


class AlignedTargets(Dataset[Any]):
    """A labelled data set with its target columns reordered to the model's label order."""

    def __init__(self, dataset: Any, labels: Sequence[str]) -> None:
        data_labels = list(dataset.labels)
        unknown = [name for name in data_labels if name not in labels]
        if unknown:
            raise ValueError(f"the data has labels the model does not know: {unknown[:10]}")
        self.dataset = dataset
        self.columns = [data_labels.index(n) if n in data_labels else -1 for n in labels]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        wave, target = self.dataset[index]
        target = np.asarray(target, dtype=np.float32)
        padded = np.append(target, np.float32(0.0))  # column -1: a label the data lacks
        return wave, padded[self.columns]


def align_dataset(dataset: Any, labels: Sequence[str]) -> Any:
    """``dataset`` itself when its labels already are ``labels`` (or it has none)."""
    data_labels = getattr(dataset, "labels", None)
    if data_labels is None or list(data_labels) == list(labels):
        return dataset
    return AlignedTargets(dataset, labels)


def default_out(checkpoint: Path, data: str) -> Path:
    """Where an evaluation is saved: inside the run for a checkpoint of a training run."""
    data_name = Path(data.rstrip("/")).stem or "data"
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / f"eval-{data_name}"
    return checkpoint.with_name(f"{checkpoint.stem}-eval-{data_name}")


def format_summary(summary: dict[str, Any]) -> str:
    """The AudioSet-style summary block."""

    def number(key: str) -> str:
        value = summary.get(key)
        return "n/a (no class can be scored)" if value is None else f"{value:.4f}"

    return "\n".join(
        [
            f"checkpoint  {summary['checkpoint']}",
            f"data        {summary['data']}: {summary['clips']} clips, "
            f"{summary['classes_scored']} of {summary['classes']} classes scored",
            f"mAP         {number('mAP')}",
            f"mean AUC    {number('mAUC')}",
            f"d-prime     {number('d_prime')}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (.pth)")
    parser.add_argument("--arch", default=None, help="architecture (official checkpoints)")
    parser.add_argument("--data", required=True, help="pack .h5, label folder or CSV")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for summary.json, per_class.csv and per_class.png "
        "(default: RUN/eval-<data name>)",
    )
    parser.add_argument(
        "--csv", type=Path, default=None, help="also write the per-class table here"
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="write per_class.png: sorted per-class AP, best and worst named",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON line instead of a table"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default: 2)")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bfloat16 autocast on CUDA",
    )
    return parser


def save(
    out: Path,
    summary: dict[str, Any],
    names: Sequence[str],
    result: Scores,
    *,
    csv: Path | None,
    plot: bool,
) -> list[Path]:
    """Write summary.json, per_class.csv (and ``csv``, and with ``plot`` per_class.png)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    written = [out / "summary.json", out / "per_class.csv"]
    write_class_table(written[1], names, result)
    if csv is not None:
        shutil.copyfile(written[1], csv)
        written.append(csv)
    if plot and summary["classes_scored"]:
        from training.plots import per_class_ap

        title = f"{summary['checkpoint']} on {summary['data']}: per-class AP"
        written.append(per_class_ap(class_rows(names, result), out / "per_class.png", title=title))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from training.checkpoints import read_checkpoint
    from training.checkpoints.loading import model_from_checkpoint
    from training.data import open_dataset
    from training.runtime import Dist, resolve_device

    device = resolve_device(args.device, Dist())
    checkpoint = read_checkpoint(args.checkpoint)  # read once: weights and labels
    model = model_from_checkpoint(args.checkpoint, checkpoint, arch=args.arch).to(device)
    keys, names = model_labels(checkpoint, model.classes_num)
    dataset = align_dataset(open_dataset(args.data), keys)
    targets, scores = predict(
        model,
        dataset,
        batch_size=args.batch_size,
        device=device,
        workers=args.workers,
        amp=args.amp,
    )
    result = evaluate_scores(targets, scores)
    summary: dict[str, Any] = {
        **result.summary(),
        "clips": int(targets.shape[0]),
        "classes_scored": int(np.sum(~np.isnan(result.ap))),
        "classes": len(names),
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
    }
    out = args.out or default_out(args.checkpoint, args.data)
    written = save(out, summary, names, result, csv=args.csv, plot=args.plot)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        print("saved       " + "\n            ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
