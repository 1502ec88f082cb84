"""Element-wise losses, partial means, and the weighted total whose gradient is right under DDP.

Element-wise losses of a difference ``d = pred - target`` (no reduction):

=========  ==========================================================================
``mae``    ``|d|``
``mse``    ``d²``
``huber``  ``½ d²`` if ``|d| ≤ δ``, else ``δ (|d| - ½ δ)``   (``torch.nn.functional.huber_loss``)
=========  ==========================================================================

A loss component k is a *mean* over the values that have a label (atoms with forces, structures
with energy, ...). In data-parallel training each rank sees a different number of them, so a rank
reports a :class:`Term` — the partial sum ``S_k,r`` and the number of values ``n_k,r`` — and the
global mean is ``Σ_r S_k,r / N_k`` with ``N_k = Σ_r n_k,r`` (the counts all-reduced across ranks,
:func:`global_counts`). Averaging per-rank means instead would weight a rank with 3 labelled atoms
like a rank with 3,000.

DDP averages gradients over the W ranks: ``g = (1/W) Σ_r ∇L_r``. :func:`combine` therefore builds on
each rank::

    L_r = Σ_k w_k · S_k,r · W / N_k

so that ``(1/W) Σ_r ∇L_r = Σ_k w_k ∇(Σ_r S_k,r) / N_k``, the gradient of the exact global weighted
mean ``Σ_k w_k · mean_k``. The value ``(1/W) Σ_r L_r`` is that global loss too. A component with
``N_k = 0`` (no labelled value on any rank) contributes ``0 · S_k,r`` — zero, never NaN, and still
part of the autograd graph, so every rank runs the same backward and DDP's gradient hooks fire for
the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("mae", "mse", "huber")


def elementwise(kind: str, pred: Tensor, target: Tensor, huber_delta: float = 0.01) -> Tensor:
    """Loss of each element of ``pred`` against ``target`` (same shape), unreduced.

    kind: "mae", "mse" or "huber" (see the module docstring); huber_delta: δ in the units of ``pred``.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    target = target.to(pred.dtype)
    if kind == "mae":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target).square()
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be positive, got {huber_delta}")
    return F.huber_loss(pred, target, reduction="none", delta=float(huber_delta))


def mask_count(mask: Tensor, shape: Sequence[int]) -> Tensor:
    """Number of True values of ``mask`` broadcast to ``shape`` (a float64 scalar, no grad): the
    ``count`` of :meth:`Term.masked` for values of that shape, known without the values."""
    return mask.to(torch.bool).expand(tuple(shape)).sum().to(torch.float64).detach()


@dataclass
class Term:
    """A partial mean: ``sum`` (scalar, differentiable) of ``count`` values (scalar float, no grad)."""

    sum: Tensor
    count: Tensor

    @classmethod
    def masked(cls, values: Tensor, mask: Tensor) -> "Term":
        """Sum and number of the ``values`` where ``mask`` (broadcast to ``values``' shape) is True.

        Masked-out values are replaced, not multiplied, so a NaN or inf there cannot leak in.
        """
        mask = mask.to(torch.bool)
        if mask.shape != values.shape:
            mask = mask.expand_as(values)
        total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
        return cls(total, mask_count(mask, values.shape).to(values.dtype))

    def mean(self) -> Tensor:
        """``sum / count`` (0 when ``count`` is 0), detached: for logging a single rank's value."""
        s = self.sum.detach()
        return torch.where(self.count > 0, s / self.count.clamp_min(1), torch.zeros_like(s))


def combine(terms: Mapping[str, Term], weights: Mapping[str, float], global_counts: Mapping[str, Tensor],
            world_size: int) -> Tensor:
    """``Σ_k w_k · sum_k · world_size / global_count_k`` (see the module docstring); zero-count terms give 0.

    Every term needs a weight and a global count (missing ones are an error, not a silent zero).
    """
    if not terms:
        raise ValueError("combine needs at least one loss term")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    missing_w = sorted(set(terms) - set(weights))
    missing_c = sorted(set(terms) - set(global_counts))
    if missing_w or missing_c:
        raise ValueError(f"loss terms without a weight: {missing_w}; without a global count: {missing_c}")
    total: Tensor | None = None
    for name in sorted(terms):
        term = terms[name]
        count = torch.as_tensor(global_counts[name], dtype=term.sum.dtype, device=term.sum.device).detach()
        safe = torch.where(count > 0, count, torch.ones_like(count))
        factor = torch.where(count > 0, float(weights[name]) * float(world_size) / safe, torch.zeros_like(count))
        part = term.sum * factor
        total = part if total is None else total + part
    assert total is not None
    return total


def _all_reduce(values: Tensor, group) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values


def global_counts(terms: Mapping[str, Term], group=None) -> dict[str, Tensor]:
    """The terms' counts summed over the ranks of ``group`` (one all-reduce; local counts when
    ``torch.distributed`` is not initialised). Every rank must pass the same term names."""
    names = sorted(terms)
    if not names:
        return {}
    stacked = torch.stack([terms[n].count.detach().to(torch.float64) for n in names])
    reduced = _all_reduce(stacked, group)
    return {n: reduced[i].to(terms[n].count.dtype) for i, n in enumerate(names)}


def reduce_terms(terms: Mapping[str, Term], group=None) -> dict[str, tuple[float, float]]:
    """``{name: (global sum, global count)}`` over the ranks of ``group`` (detached, one all-reduce);
    for validation metrics. The global mean is ``sum / count`` where ``count > 0``."""
    names = sorted(terms)
    if not names:
        return {}
    stacked = torch.stack([torch.stack([terms[n].sum.detach().to(torch.float64),
                                        terms[n].count.detach().to(torch.float64)]) for n in names])
    reduced = _all_reduce(stacked, group).cpu()
    return {n: (float(reduced[i, 0]), float(reduced[i, 1])) for i, n in enumerate(names)}
