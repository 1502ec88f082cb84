"""Test and validation metrics of fine-tuning, from arrays of targets and predictions.

For targets y and predictions ŷ (n values, physical units)::

    MAE  = (1/n) Σ |ŷ − y|
    RMSE = sqrt((1/n) Σ (ŷ − y)²)
    R²   = 1 − Σ (ŷ − y)² / Σ (y − ȳ)²            (NaN when every y is equal)

Binary classification, labels y ∈ {0, 1}, scores p = predicted probability of class 1::

    ROC-AUC  = P(p⁺ > p⁻) + ½ P(p⁺ = p⁻)      (Mann–Whitney U / (n⁺ n⁻), average ranks for ties;
                                             NaN when one class is absent)
    accuracy = (1/n) Σ [ (p ≥ ½) = y ]
    log loss = −(1/n) Σ [ y log p + (1 − y) log(1 − p) ]   (p clipped to [1e-12, 1 − 1e-12])
"""

from __future__ import annotations

import math

import numpy as np


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"mae", "rmse", "r2"}`` of ``pred`` against ``y`` (1-d arrays of equal length)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    if y.shape != pred.shape or y.size == 0:
        raise ValueError(f"need equal, non-empty arrays, got {y.shape} and {pred.shape}")
    err = pred - y
    ss_tot = float(np.square(y - y.mean()).sum())
    r2 = 1.0 - float(np.square(err).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt(np.square(err).mean())), "r2": r2}


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (module docstring); NaN if ``y`` holds one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y).reshape(-1).astype(bool)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)  # average ranks for ties
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """``{"roc_auc", "accuracy", "log_loss"}`` of probabilities ``prob`` of class 1 against 0/1 ``y``."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.shape != prob.shape or y.size == 0:
        raise ValueError(f"need equal, non-empty arrays, got {y.shape} and {prob.shape}")
    p = np.clip(prob, 1e-12, 1 - 1e-12)
    return {"roc_auc": roc_auc(y, prob), "accuracy": float(((prob >= 0.5) == (y > 0.5)).mean()),
            "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())}
