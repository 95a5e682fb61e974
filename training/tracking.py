"""What a training run records for people to watch and compare (rank 0 only).

* ``log.jsonl``: one line per evaluation (loss, lr, mAP, mean AUC, d-prime, throughput);
* TensorBoard event files in the run directory (unless ``--no-tensorboard``): ``train/loss``
  and ``train/lr`` every step (and ``train/grad_norm`` when clipping), ``eval/mAP``,
  ``eval/mAUC``, ``eval/d_prime``, ``train/clips_per_second`` and the per-class AP as the
  histogram ``eval/class_AP`` at every evaluation;
* ``per_class.csv``: the per-class table of the latest evaluation (read by
  ``python -m training.report``).

Per-step values stay on the device and are copied in one go every :data:`FLUSH_EVERY` steps,
so the TensorBoard loss curve does not add a GPU synchronisation to every step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from training.audioset import display_names
from training.metrics import Scores, write_class_table
from training.rundir import RunDir

FLUSH_EVERY = 20


class RunLog:
    """Writes a run's log.jsonl, TensorBoard events and per-class table.

    ``start_step``: the step the run starts (or resumes) from; TensorBoard drops the events
    an earlier, interrupted process wrote after it, so a resumed curve has no doubled steps.
    """

    def __init__(
        self, run: RunDir, labels: Sequence[str], *, tensorboard: bool, start_step: int = 0
    ) -> None:
        self.run = run
        self.names = display_names(labels)
        self.pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = []
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run.root), flush_secs=30, purge_step=start_step + 1 if start_step else None
            )

    def step(
        self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None = None
    ) -> None:
        """Record one optimisation step (``loss`` and ``grad_norm`` still on the device)."""
        if self.writer is None:
            return
        self.pending.append((step, loss, lr, grad_norm))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.writer is None or not self.pending:
            return
        losses = torch.stack([p[1] for p in self.pending]).float().cpu().tolist()
        norms = [p[3] for p in self.pending]
        norm_values = (
            torch.stack(norms).float().cpu().tolist()  # type: ignore[arg-type]
            if all(n is not None for n in norms)
            else None
        )
        for i, (step, _, lr, _) in enumerate(self.pending):
            self.writer.add_scalar("train/loss", losses[i], step)
            self.writer.add_scalar("train/lr", lr, step)
            if norm_values is not None:
                self.writer.add_scalar("train/grad_norm", norm_values[i], step)
        self.pending.clear()

    def evaluation(self, record: dict[str, Any], scores: Scores | None) -> None:
        """Append ``record`` to log.jsonl; the scores to TensorBoard and per_class.csv."""
        with self.run.log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if scores is not None:
            names = (
                self.names
                if len(self.names) == len(scores.ap)
                else [f"class_{i}" for i in range(len(scores.ap))]
            )
            write_class_table(self.run.per_class, names, scores)
        if self.writer is None:
            return
        self.flush()
        step = int(record["iteration"])
        self.writer.add_scalar("train/clips_per_second", record["clips_per_second"], step)
        for key in ("mAP", "mAUC", "d_prime"):
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"eval/{key}", value, step)
        finite = scores.ap[~np.isnan(scores.ap)] if scores is not None else np.zeros(0)
        if finite.size:
            self.writer.add_histogram("eval/class_AP", finite, step, bins=np.linspace(0, 1, 21))
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
