"""Early stopping on a validation metric, keeping the best weights.

Each :meth:`EarlyStopping.observe` takes an epoch's metric (lower is better; pass ``mode="max"``
for ROC-AUC and accuracy). An improvement is a value better than the best so far by more than
``min_delta`` (absolute); it resets the count and keeps a CPU copy of the weights. After
``patience`` epochs without improvement :attr:`should_stop` turns True. :meth:`restore` puts the
best weights back, so the model that is evaluated and saved is the best epoch's, not the last.
A non-finite metric never counts as an improvement.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EarlyStopping:
    """Track the best validation metric and the weights that gave it (module docstring)."""

    def __init__(self, patience: int = 50, mode: str = "min", min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float = math.inf if mode == "min" else -math.inf
        self.best_epoch: int = -1
        self.bad_epochs = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def observe(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record epoch ``epoch``'s metric; return True if it is the new best (weights kept)."""
        if self._better(float(value)):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing if no epoch improved)."""
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
