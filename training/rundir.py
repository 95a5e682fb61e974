"""The layout of a training run directory (no heavy imports: the report reads it too)."""

from __future__ import annotations

from pathlib import Path


class RunDir:
    """The files of a run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.log = self.root / "log.jsonl"
        self.per_class = self.root / "per_class.csv"  # the latest periodic evaluation
        self.latest = self.root / "checkpoints" / "latest.pth"
        self.best = self.root / "checkpoints" / "best.pth"

    def class_tables(self) -> list[Path]:
        """Per-class tables of the run's evaluations: the training's own and those of
        ``python -m training.evaluate`` written into the run (``eval-*/per_class.csv``)."""
        found = [self.per_class, *self.root.glob("eval-*/per_class.csv")]
        return [p for p in found if p.is_file()]
