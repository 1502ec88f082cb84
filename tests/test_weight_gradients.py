"""The training backward restricted to the weights (training/weight_gradients.py): the same weight
gradients as ``loss.backward()`` for force and stress training, without the positions' gradient."""

from __future__ import annotations

import pytest
import torch

from efs_physics import MLEARN, PEROV5, graph_batch, make_model, rattle
from matforge.training.weight_gradients import backward_to_weights, trainable_weights


def _efs_loss(model, batch):
    out = model(batch, forces=True, stress=True, create_graph=True)
    return out["energy"].pow(2).sum() + 10 * out["forces"].pow(2).sum() + 100 * out["stress"].pow(2).sum()


@pytest.mark.parametrize("arch", ["cgcnn_smooth", "painn"])
def test_weight_gradients_equal_the_full_backward(arch):
    model = make_model(arch)
    records = [rattle(MLEARN[2], 0.05, seed=4), rattle(PEROV5[0], 0.05, seed=5)]
    batch = graph_batch(records, model)
    weights = trainable_weights(model)

    _efs_loss(model, batch).backward()
    full = [p.grad.clone() if p.grad is not None else None for p in weights]
    model.zero_grad(set_to_none=True)

    batch = graph_batch(records, model)
    backward_to_weights(_efs_loss(model, batch), weights)
    pruned = [p.grad for p in weights]
    assert [g is None for g in full] == [g is None for g in pruned]
    assert sum(g is not None for g in pruned) > len(weights) // 2
    for want, got in zip(full, pruned):
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_positions_get_no_gradient_and_frozen_weights_are_left_out():
    model = make_model("painn")
    for p in model.backbone.embedding.parameters():
        p.requires_grad_(False)
    weights = trainable_weights(model)
    assert all(p.requires_grad for p in weights)
    assert len(weights) == sum(1 for p in model.parameters()) - 1
    record = rattle(MLEARN[0], 0.05, seed=1)
    plain = graph_batch([record], model)
    plain.pos.requires_grad_(True)
    _efs_loss(model, plain).backward()
    assert plain.pos.grad is not None          # a plain backward also fills the positions' gradient
    model.zero_grad(set_to_none=True)
    batch = graph_batch([record], model)
    batch.pos.requires_grad_(True)
    backward_to_weights(_efs_loss(model, batch), weights)
    assert batch.pos.grad is None
    assert model.backbone.embedding.weight.grad is None


def test_no_weights_is_refused():
    with pytest.raises(ValueError, match="no trainable weights"):
        backward_to_weights(torch.zeros((), requires_grad=True), [])
