"""Exponential moving average (EMA) of a model's weights, for evaluation and export.

After every optimiser step, for each floating-point parameter and buffer θ::

    θ_ema ← d · θ_ema + (1 − d) · θ          (d = decay, e.g. 0.999)

integer buffers (BatchNorm's step counter) are copied. The averaged copy is what validation sees
and what is saved when EMA is on; the model that trains is never changed. Built on
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (buffers averaged too, so
BatchNorm's running statistics follow the weights they belong to).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """EMA of ``model``'s parameters and buffers; ``update()`` after each step, ``module`` to use."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self._source = model
        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        # the construction copy is the average's start: the first update blends (torch would copy again)
        self._averaged.n_averaged.fill_(1)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the source model's current weights into the average; copy integer buffers."""
        self._averaged.update_parameters(self._source)
        for mine, theirs in zip(self._averaged.module.buffers(), self._source.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class as the source; shares nothing with it)."""
        return self._averaged.module

    def copy_into(self, model: nn.Module) -> None:
        """Load the averaged weights and buffers into ``model`` (same architecture)."""
        model.load_state_dict(copy.deepcopy(self.module.state_dict()))
