"""mAP, AUC and d-prime against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics import average_precision, d_prime, evaluate_scores, roc_auc


def test_hand_computed_example() -> None:
    # Ranking by score: pos, neg, pos, neg -> precision at the positives 1/1 and 2/3.
    target = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(target, scores)[0] == pytest.approx((1 + 2 / 3) / 2)
    # Positive-negative pairs ranked right: (0.9>0.8), (0.9>0.1), (0.7>0.1), not (0.7>0.8): 3/4.
    assert roc_auc(target, scores)[0] == pytest.approx(0.75)


def test_ties_count_as_one_threshold() -> None:
    target = np.array([1, 0, 1, 0])
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    assert average_precision(target, scores)[0] == pytest.approx(0.5)
    assert roc_auc(target, scores)[0] == pytest.approx(0.5)


def test_perfect_and_inverted_rankings() -> None:
    target = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.2, 0.2], [0.1, 0.1]])
    result = evaluate_scores(target, scores)
    assert result.ap[0] == 1.0 and result.auc[0] == 1.0
    assert result.auc[1] == 0.0
    assert result.ap[1] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result.mAUC == pytest.approx(0.5)
    assert result.d_prime == pytest.approx(0.0, abs=1e-12)


def test_d_prime() -> None:
    assert d_prime(0.5) == 0.0
    # Phi^-1(0.8413447) = 1 -> d' = sqrt(2).
    assert d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2))
    assert math.isfinite(d_prime(1.0)) and d_prime(1.0) > 6
    assert math.isnan(d_prime(math.nan))


def test_classes_without_positives_are_left_out() -> None:
    target = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    scores = np.array([[0.9, 0.3, 0.2], [0.1, 0.2, 0.5], [0.8, 0.1, 0.7]])
    result = evaluate_scores(target, scores)
    assert math.isnan(result.ap[1]) and math.isnan(result.auc[1])
    assert result.ap[2] == 1.0 and math.isnan(result.auc[2])  # all positive: AP, no AUC
    assert result.mAP == pytest.approx(1.0)
    assert result.mAUC == pytest.approx(1.0)
    assert result.summary()["mAP"] == pytest.approx(1.0)


def test_against_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    target = (rng.random((300, 20)) < 0.15).astype(np.float32)
    scores = np.round(rng.random((300, 20)) * 0.5 + 0.5 * target * rng.random((300, 20)), 2)
    ap, auc = average_precision(target, scores), roc_auc(target, scores)
    for k in range(20):
        assert ap[k] == pytest.approx(
            average_precision_score(target[:, k], scores[:, k]), abs=1e-12
        )
        assert auc[k] == pytest.approx(roc_auc_score(target[:, k], scores[:, k]), abs=1e-12)
    expected = average_precision_score(target, scores, average="macro")
    assert evaluate_scores(target, scores).mAP == pytest.approx(expected, abs=1e-12)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        evaluate_scores(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.ones((2, 1)), np.array([[np.nan], [0.1]]))
    with pytest.raises(ValueError, match="empty"):
        evaluate_scores(np.zeros((0, 2)), np.zeros((0, 2)))
