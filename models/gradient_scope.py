"""Which kinds of gradient a backward pass will read, for hand-written backward functions that can skip work.

PyTorch's own operations skip the gradient of an input that leads to no tensor the caller asked for.
A custom ``torch.autograd.Function`` cannot see that: its ``ctx.needs_input_grad`` only says which inputs
require grad, so it computes gradients the engine then throws away. Force and stress training has two
passes that ask for a known subset:

* the forces and stress, ``torch.autograd.grad`` of the energy with respect to positions and strain
  (:meth:`matforge.models.model.AtomisticModel.forward`), read no gradient of a **weight**;
* the training step's backward, :func:`matforge.training.weight_gradients.backward_to_weights`, reads
  no gradient of a **geometry** tensor (one computed from positions, cells and strain alone, such as
  radial features and unit directions of edges).

``skipping(kind)`` declares that for the length of such a pass, and a backward function computes a
gradient of that kind only if :func:`wanted` says so. A function asks only about inputs it knows to be
of that kind (PaiNN's filter weights are parameters; its radial features and directions come from the
edge vectors alone): a gradient skipped wrongly would be silently wrong, so nothing is skipped unless
both sides declare it.

The state is process-wide, not per thread, because autograd runs the backward functions of a GPU on a
thread of its own; a training process runs one step at a time.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

KINDS = ("weights", "geometry")
_SKIPPED: set[str] = set()


@contextmanager
def skipping(*kinds: str) -> Iterator[None]:
    """Within the block, backward functions may skip gradients of these ``kinds`` (module docstring)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown gradient kind(s) {unknown}; kinds are {KINDS}")
    before = set(_SKIPPED)
    _SKIPPED.update(kinds)
    try:
        yield
    finally:
        _SKIPPED.clear()
        _SKIPPED.update(before)


def wanted(kind: str) -> bool:
    """False inside ``skipping(kind)``: the pass running now reads no gradient of this kind."""
    return kind not in _SKIPPED
