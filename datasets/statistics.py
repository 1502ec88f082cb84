"""Streaming label statistics for the manifest.

:class:`RunningStats` keeps count, mean, M2 (sum of squared deviations), min and max, and merges
batches with Chan's parallel update::

    n = n_a + n_b,  δ = mean_b - mean_a
    mean = mean_a + δ n_b / n
    M2 = M2_a + M2_b + δ² n_a n_b / n

so one pass over a dataset of any size gives exact mean and std = sqrt(M2 / n) (population).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class RunningStats:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def update(self, values: np.ndarray | float) -> None:
        """Fold in one value or an array of values (flattened)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return
        n_b = int(v.size)
        mean_b = float(v.mean())
        m2_b = float(((v - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def as_dict(self) -> dict[str, float | int]:
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}
