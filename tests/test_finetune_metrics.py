"""Fine-tuning's test metrics (``matforge.finetune.metrics``): regression MAE/RMSE/R² and binary
classification ROC-AUC/accuracy/log loss, against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from matforge.finetune.metrics import classification_metrics, regression_metrics, roc_auc


def test_regression_metrics_by_hand():
    # errors [0.5, 0, -1, 1]: MAE 2.5/4, MSE 2.25/4, Σ(y - ȳ)² = 5 with ȳ = 2.5
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0]))
    assert m["mae"] == 0.625
    assert m["rmse"] == 0.75
    assert m["r2"] == pytest.approx(1 - 2.25 / 5, abs=1e-15)
    assert set(m) == {"mae", "rmse", "r2"} and all(type(v) is float for v in m.values())


def test_regression_metrics_accept_columns_and_perfect_prediction():
    y = np.array([[0.5], [-1.0], [2.0]])
    m = regression_metrics(y, y.reshape(-1))
    assert m == {"mae": 0.0, "rmse": 0.0, "r2": 1.0}


def test_regression_r2_is_worse_than_zero_for_a_bad_model():
    # predicting the opposite: Σ err² = Σ (2y)² = 4 Σ y² with ȳ = 0 -> R² = 1 - 4 = -3
    y = np.array([-1.0, 1.0, -2.0, 2.0])
    m = regression_metrics(y, -y)
    assert m["r2"] == -3.0 and m["mae"] == 3.0 and m["rmse"] == math.sqrt(10.0)


def test_regression_r2_nan_for_constant_targets():
    m = regression_metrics(np.full(4, 3.0), np.array([3.0, 4.0, 2.0, 3.0]))
    assert math.isnan(m["r2"])
    assert m["mae"] == 0.5 and m["rmse"] == math.sqrt(0.5)


@pytest.mark.parametrize("y, pred", [([1.0, 2.0], [1.0]), ([], [])])
def test_regression_metrics_reject_mismatched_or_empty(y, pred):
    with pytest.raises(ValueError):
        regression_metrics(np.array(y), np.array(pred))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40 + 7 * seed
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]                                   # both classes present
    score = rng.integers(0, 5, n) / 4.0              # five distinct values: many ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    continuous = rng.random(n)
    assert roc_auc(y, continuous) == pytest.approx(roc_auc_score(y, continuous), abs=1e-12)


def test_roc_auc_by_hand():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5          # a tie counts one half
    assert roc_auc(np.array([1, 1, 0]), np.array([0.0, 0.1, 0.9])) == 0.0
    assert roc_auc(np.array([True, False]), np.array([0.9, 0.1])) == 1.0


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1]])
def test_roc_auc_nan_for_one_class(y):
    assert math.isnan(roc_auc(np.array(y), np.linspace(0, 1, len(y))))
    assert math.isnan(classification_metrics(np.array(y), np.linspace(0.1, 0.9, len(y)))["roc_auc"])


def test_classification_metrics_by_hand():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    prob = np.array([0.9, 0.2, 0.4, 0.5])              # p >= 0.5 -> [1, 0, 0, 1]: 2 of 4 right
    m = classification_metrics(y, prob)
    assert m["accuracy"] == 0.5
    assert m["roc_auc"] == 0.75
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.5)) / 4
    assert m["log_loss"] == pytest.approx(expected, rel=1e-14)


def test_log_loss_clips_certain_wrong_predictions():
    m = classification_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
    # y=1, p=0 -> -log(1e-12); y=0, p=1 -> -log(1 - (1 - 1e-12)) (the clip, in float64)
    expected = -(math.log(1e-12) + math.log(1 - (1 - 1e-12))) / 2
    assert m["log_loss"] == pytest.approx(expected, rel=1e-12) and m["log_loss"] == pytest.approx(27.631, rel=1e-5)
    assert m["accuracy"] == 0.0 and m["roc_auc"] == 0.0
    perfect = classification_metrics(np.array([1, 0]), np.array([1.0, 0.0]))
    assert perfect["log_loss"] == pytest.approx(0.0, abs=1e-11) and perfect["accuracy"] == 1.0


def test_classification_metrics_reject_mismatched_or_empty():
    with pytest.raises(ValueError):
        classification_metrics(np.array([1, 0]), np.array([0.5]))
    with pytest.raises(ValueError):
        classification_metrics(np.array([]), np.array([]))
