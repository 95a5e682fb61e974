"""Plot and compare training runs: learning curves and the per-class AP of an evaluation.

    python -m training.report RUN_DIR [RUN_DIR ...] [--out DIR] [--top 20]

Learning curves (evaluation mAP and training loss against steps, from each run's
``log.jsonl``) of all the runs in one figure, side by side: ``RUN_DIR/curves.png`` for one run,
``curves_<run>_vs_<run>.png`` in the runs' common parent directory for several (or in
``--out``). For every run, the per-class AP of its newest evaluation (the training's latest,
``per_class.csv``, or one that ``python -m training.evaluate`` wrote into the run) is plotted
sorted, with the best and worst ``--top`` classes named, as ``per_class.png`` beside that
table, and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from training.metrics import ClassRow, read_class_table
from training.plots import Curve, learning_curves, per_class_ap, ranked
from training.rundir import RunDir


def read_curve(run: RunDir, name: str) -> Curve:
    """The run's ``log.jsonl`` as columns (a clear error when the run has not evaluated)."""
    if not run.log.is_file():
        raise ValueError(
            f"{run.root}: no log.jsonl (not a run directory, or no evaluation has finished yet)"
        )
    records = []
    for number, line in enumerate(run.log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{run.log}, line {number}: {exc}") from None
    if not records:
        raise ValueError(f"{run.log} is empty: no evaluation has finished yet")

    def column(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else float(r[key]) for r in records]

    return Curve(
        name=name,
        steps=[int(r["iteration"]) for r in records],
        train_loss=column("train_loss"),
        mAP=column("mAP"),
    )


def newest_class_table(run: RunDir) -> Path | None:
    tables = run.class_tables()
    return max(tables, key=lambda p: p.stat().st_mtime) if tables else None


def format_table(rows: Sequence[ClassRow], top: int) -> str:
    """The best and worst ``top`` scored classes (all of them when there are few)."""
    order = ranked(rows)
    sections = (
        [(f"all {len(order)} scored classes", order)]
        if len(order) <= 2 * top
        else [(f"best {top}", order[:top]), (f"worst {top}", order[::-1][:top])]
    )
    rank = {row.index: i + 1 for i, row in enumerate(order)}
    lines = []
    for title, chosen in sections:
        lines += [title, f"  {'rank':>4}  {'AP':>6}  {'AUC':>6}  {'positives':>9}  label"]
        for row in chosen:
            auc = "" if math.isnan(row.auc) else f"{row.auc:.3f}"
            lines.append(
                f"  {rank[row.index]:>4}  {row.ap:>6.3f}  {auc:>6}  {row.positives:>9}  {row.label}"
            )
    return "\n".join(lines)


def _curves_path(runs: Sequence[Path], out: Path | None) -> Path:
    if len(runs) == 1:
        return (out or runs[0]) / "curves.png"
    names = "_vs_".join(re.sub(r"[^\w.-]+", "-", p.resolve().name) for p in runs)
    parent = out or Path(os.path.commonpath([p.resolve().parent for p in runs]))
    return parent / f"curves_{names[:120]}.png"


def _names(runs: Sequence[Path]) -> list[str]:
    """Legend names: the paths relative to the runs' common parent (the name for one)."""
    if len(runs) == 1:
        return [runs[0].resolve().name]
    common = os.path.commonpath([p.resolve().parent for p in runs])
    return [os.path.relpath(p.resolve(), common) for p in runs]


def report_class_table(run: RunDir, name: str, top: int) -> None:
    table = newest_class_table(run)
    if table is None:
        print(f"{name}: no per-class table (the run has no evaluation data)")
        return
    rows = read_class_table(table)
    scored = ranked(rows)
    if not scored:
        print(f"{name}: {table} has no class with a positive clip")
        return
    mean = sum(r.ap for r in scored) / len(scored)
    figure = per_class_ap(
        rows,
        table.with_suffix(".png"),
        top=top,
        title=f"{name}: per-class AP ({table.parent.name}/{table.name})",
    )
    print(f"{name}: {table}: {len(scored)} of {len(rows)} classes scored, mAP {mean:.4f}")
    print(format_table(rows, top))
    print(f"figure: {figure}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories (of python -m training.train or .finetune)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the learning curves (default: the run, or the "
        "common parent of several)",
    )
    parser.add_argument(
        "--top", type=int, default=20, help="how many best and worst classes to name (default: 20)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    names = _names(args.runs)
    curves = [read_curve(RunDir(p), n) for p, n in zip(args.runs, names, strict=True)]
    figure = learning_curves(curves, _curves_path(args.runs, args.out))
    for curve in curves:
        best = max((m for m in curve.mAP if not math.isnan(m)), default=math.nan)
        scored = "no evaluation data" if math.isnan(best) else f"best mAP {best:.4f}"
        print(
            f"{curve.name}: {len(curve.steps)} evaluations up to step {curve.steps[-1]}, "
            f"{scored}, last training loss {curve.train_loss[-1]:.4f}"
        )
    print(f"learning curves: {figure}")
    for path, name in zip(args.runs, names, strict=True):
        print()
        report_class_table(RunDir(path), name, args.top)
    return 0


if __name__ == "__main__":
    from training.cli import run

    sys.exit(run(main))
