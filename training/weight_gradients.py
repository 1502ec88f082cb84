"""The training step's backward pass, restricted to the weights.

Force and stress training differentiates the energy with ``create_graph=True`` with respect to the
positions and the strain (leaf tensors that require gradients), then differentiates the loss, which
depends on those forces and stress, once more. A plain ``loss.backward()`` accumulates the loss's
gradient into *every* leaf of the graph, the positions and strain included, so it also runs every
branch that leads only there: for each per-edge geometric tensor (radial features, directions) the
second backward pass would compute the gradient of a matrix product with respect to its geometric
operand, work nobody reads. ``loss.backward(inputs=weights)`` tells autograd which leaves are wanted,
and it skips the branches that reach no weight. The gradients of the weights are identical.

A weight the loss does not reach keeps ``grad = None`` (as with ``loss.backward()``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from matforge.models.gradient_scope import skipping


def trainable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require gradients, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def backward_to_weights(loss: Tensor, weights: Sequence[Tensor]) -> None:
    """``loss.backward()`` into ``weights`` only (module docstring); ``weights`` must not be empty."""
    if not weights:
        raise ValueError("no trainable weights to differentiate the loss for")
    with skipping("geometry"):   # no gradient of positions, strain or what is made of them alone is read
        torch.autograd.backward(loss, inputs=list(weights))
