"""Evaluation metrics of the PANNs paper: mAP, mean AUC and d-prime.

Everything is computed per class on a ``(clips, classes)`` matrix of scores against a
multi-hot target matrix, vectorised over classes (the AudioSet evaluation set is about
20 000 x 527). Average precision follows the usual step-wise definition (the one
``sklearn.metrics.average_precision_score`` uses): ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
distinct score thresholds, so tied scores form one threshold. AUC is the Mann-Whitney statistic
with average ranks for ties (``roc_auc_score``).

Classes that have no positive clip have no AP, and classes that are all positive or all
negative have no AUC: they are reported as NaN in the per-class arrays and left out of the
means, which are therefore over the classes that can be scored.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

# d' = sqrt(2) * Phi^-1(AUC) is infinite at AUC = 1; AUC is clipped to [eps, 1 - eps] first.
_AUC_EPS = 1e-6


@dataclass(frozen=True)
class Scores:
    """Macro-averaged scores plus the per-class values (NaN where a class cannot be scored)."""

    mAP: float
    mAUC: float
    d_prime: float
    ap: np.ndarray
    auc: np.ndarray
    positives: np.ndarray  # positive clips per class

    def summary(self) -> dict[str, float | None]:
        """The three headline numbers, JSON-ready (NaN becomes None)."""
        values = {"mAP": self.mAP, "mAUC": self.mAUC, "d_prime": self.d_prime}
        return {k: (None if math.isnan(v) else float(v)) for k, v in values.items()}


def _check(target: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(target)
    scores = np.asarray(scores, dtype=np.float64)
    if target.ndim == 1:
        target, scores = target[:, None], scores[:, None]
    if target.shape != scores.shape or target.ndim != 2:
        raise ValueError(
            f"target and scores must be (clips, classes) of the same shape; "
            f"got {target.shape} and {scores.shape}"
        )
    if target.shape[0] == 0:
        raise ValueError("cannot score an empty set of clips")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    return (target > 0.5).astype(np.float64), scores


def _sorted(target: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: targets and scores ordered by descending score."""
    order = np.argsort(-scores, axis=0, kind="stable")
    return np.take_along_axis(target, order, 0), np.take_along_axis(scores, order, 0)


def average_precision(target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class average precision, NaN for a class without positives."""
    target, scores = _check(target, scores)
    y, s = _sorted(target, scores)
    n = y.shape[0]
    # Index of the last row of each run of tied scores: every row of a tie group is
    # scored with the precision reached at the end of its group.
    is_end = np.ones_like(s, dtype=bool)
    is_end[:-1] = s[:-1] != s[1:]
    end = np.where(is_end, np.arange(n)[:, None], n - 1)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    tp = np.cumsum(y, axis=0)
    precision_at_end = np.take_along_axis(tp, end, 0) / (end + 1)
    positives = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y * precision_at_end).sum(axis=0) / positives
    return np.where(positives > 0, ap, np.nan)


def roc_auc(target: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class area under the ROC curve, NaN for a class lacking positives or negatives."""
    target, scores = _check(target, scores)
    y, s = _sorted(target, scores)
    n = y.shape[0]
    # Average 1-based rank (ascending score) of every row, ties sharing their mean rank.
    is_start = np.ones_like(s, dtype=bool)
    is_start[1:] = s[1:] != s[:-1]
    is_end = np.ones_like(s, dtype=bool)
    is_end[:-1] = s[:-1] != s[1:]
    idx = np.arange(n)[:, None]
    start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=0)
    end = np.minimum.accumulate(np.where(is_end, idx, n - 1)[::-1], axis=0)[::-1]
    descending_rank = (start + end) / 2.0  # 0-based position in descending order
    ascending_rank = n - descending_rank
    positives = y.sum(axis=0)
    negatives = n - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((y * ascending_rank).sum(axis=0) - positives * (positives + 1) / 2) / (
            positives * negatives
        )
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def d_prime(auc: float) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(AUC) (AUC clipped away from 0 and 1)."""
    if math.isnan(auc):
        return math.nan
    clipped = min(max(auc, _AUC_EPS), 1.0 - _AUC_EPS)
    return math.sqrt(2.0) * NormalDist().inv_cdf(clipped)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def evaluate_scores(target: np.ndarray, scores: np.ndarray) -> Scores:
    """mAP and mean AUC over the scorable classes, and the d-prime of that mean AUC."""
    ap = average_precision(target, scores)
    auc = roc_auc(target, scores)
    mean_auc = _nanmean(auc)
    positives = np.atleast_1d((np.asarray(target) > 0.5).sum(axis=0)).astype(np.int64)
    return Scores(
        mAP=_nanmean(ap),
        mAUC=mean_auc,
        d_prime=d_prime(mean_auc),
        ap=ap,
        auc=auc,
        positives=positives,
    )


# The per-class table of an evaluation: one row per model output class, empty cells where a
# class cannot be scored (no NaN in the file).
CLASS_TABLE_HEADER = ["index", "label", "ap", "auc", "positives"]


@dataclass(frozen=True)
class ClassRow:
    index: int
    label: str
    ap: float  # NaN: no positive clip
    auc: float  # NaN: all clips positive or all negative
    positives: int


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def class_rows(labels: Sequence[str], scores: Scores) -> list[ClassRow]:
    """The per-class table in memory (what :func:`write_class_table` writes)."""
    if len(labels) != len(scores.ap):
        raise ValueError(f"{len(labels)} labels for {len(scores.ap)} scored classes")
    return [
        ClassRow(i, name, float(scores.ap[i]), float(scores.auc[i]), int(scores.positives[i]))
        for i, name in enumerate(labels)
    ]


def write_class_table(path: str | Path, labels: Sequence[str], scores: Scores) -> None:
    """``index, label, ap, auc, positives`` per class, in the model's output order."""
    rows = class_rows(labels, scores)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CLASS_TABLE_HEADER)
        writer.writerows([r.index, r.label, _cell(r.ap), _cell(r.auc), r.positives] for r in rows)


def read_class_table(path: str | Path) -> list[ClassRow]:
    """The rows :func:`write_class_table` wrote (a clear error for any other CSV)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != CLASS_TABLE_HEADER:
            raise ValueError(
                f"{path}: not a per-class table (expected columns "
                f"{','.join(CLASS_TABLE_HEADER)}, got {reader.fieldnames})"
            )
        try:
            return [
                ClassRow(
                    int(r["index"]),
                    r["label"],
                    float(r["ap"] or "nan"),
                    float(r["auc"] or "nan"),
                    int(r["positives"]),
                )
                for r in reader
            ]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}, line {reader.line_num}: {exc}") from None
