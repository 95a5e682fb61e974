"""PNG figures of training runs and evaluations (matplotlib's Agg canvas: no display needed).

Figures are built on :class:`matplotlib.figure.Figure` directly, not through ``pyplot``, so
nothing here touches a global backend or keeps figures alive after they are saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from training.metrics import ClassRow

DPI = 100
_NAME_CHARS = 38


@dataclass(frozen=True)
class Curve:
    """One run's evaluations: ``log.jsonl`` as columns."""

    name: str
    steps: list[int]
    train_loss: list[float]
    mAP: list[float]  # NaN where an evaluation had no mAP (no evaluation data)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def learning_curves(curves: Sequence[Curve], path: Path) -> Path:
    """mAP and training loss against steps, one line per run, the two panels side by side."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_map, ax_loss = fig.subplots(1, 2)
    for curve in curves:
        scored = [(s, m) for s, m in zip(curve.steps, curve.mAP, strict=True) if not math.isnan(m)]
        line = ax_loss.plot(curve.steps, curve.train_loss, marker=".", label=curve.name)[0]
        if scored:
            ax_map.plot(
                *zip(*scored, strict=True),
                marker=".",
                color=line.get_color(),
                label=f"{curve.name} (best {max(m for _, m in scored):.3f})",
            )
    ax_map.set(xlabel="steps", ylabel="evaluation mAP", title="mAP")
    ax_loss.set(
        xlabel="steps",
        ylabel="training loss (BCE, mean since last evaluation)",
        title="training loss",
    )
    for ax in (ax_map, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save(fig, path)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def _named_bars(ax: Axes, rows: Sequence[ClassRow], title: str) -> None:
    """Horizontal AP bars, the first row at the top, each named."""
    bars = ax.barh(range(len(rows)), [r.ap for r in rows], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize="x-small")
    ax.set_yticks(range(len(rows)), [_short(r.label) for r in rows], fontsize="small")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="AP", title=title)
    ax.grid(axis="x", alpha=0.3)


def ranked(rows: Sequence[ClassRow]) -> list[ClassRow]:
    """The scored classes (those with an AP), best first."""
    return sorted((r for r in rows if not math.isnan(r.ap)), key=lambda r: (-r.ap, r.index))


def per_class_ap(rows: Sequence[ClassRow], path: Path, *, title: str, top: int = 20) -> Path:
    """Sorted per-class AP of all scored classes; the best and worst ``top`` named."""
    order = ranked(rows)
    if not order:
        raise ValueError("no class has a positive clip: there is no AP to plot")
    mean = sum(r.ap for r in order) / len(order)
    few = len(order) <= 2 * top
    named_rows = len(order) if few else top
    fig = Figure(figsize=(13, 3.5 + 0.22 * named_rows), layout="constrained")
    grid: Any = fig.add_gridspec(2, 2, height_ratios=[2.5, 0.22 * named_rows + 1])
    overview = fig.add_subplot(grid[0, :])
    overview.bar(range(1, len(order) + 1), [r.ap for r in order], width=1.0, color="tab:blue")
    overview.axhline(mean, color="tab:red", linestyle="--", label=f"mAP {mean:.3f}")
    overview.set(
        xlim=(0.5, len(order) + 0.5),
        ylim=(0, 1),
        ylabel="AP",
        xlabel=f"rank (of {len(order)} scored classes)",
        title=title,
    )
    overview.xaxis.set_major_locator(MaxNLocator(integer=True))
    overview.legend(loc="upper right")
    if few:
        _named_bars(fig.add_subplot(grid[1, :]), order, f"all {len(order)} classes")
    else:
        _named_bars(fig.add_subplot(grid[1, 0]), order[:top], f"best {top}")
        _named_bars(fig.add_subplot(grid[1, 1]), order[::-1][:top], f"worst {top} (worst first)")
    return _save(fig, path)
