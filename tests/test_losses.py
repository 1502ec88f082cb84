"""Element-wise losses (exact values), partial means with masks, and ``combine``: the DDP-averaged
total equals the exact global mean when ranks hold unequal numbers of labels, zero counts give 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matforge.models.losses import Term, combine, elementwise, global_counts, reduce_terms

PRED = torch.tensor([1.0, -2.0, 0.005], dtype=torch.float64)
TARGET = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("kind, delta, expected", [
    ("mae", 0.01, [0.5, 3.0, 0.005]),
    ("mse", 0.01, [0.25, 9.0, 0.000025]),
    # δ = 0.01: |d| > δ -> δ(|d| - δ/2); |d| <= δ -> d²/2
    ("huber", 0.01, [0.01 * (0.5 - 0.005), 0.01 * (3.0 - 0.005), 0.5 * 0.005 ** 2]),
    ("huber", 1.0, [0.5 * 0.25, 1.0 * (3.0 - 0.5), 0.5 * 0.005 ** 2]),
])
def test_elementwise_values(kind, delta, expected):
    out = elementwise(kind, PRED, TARGET, huber_delta=delta)
    assert out.shape == PRED.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_elementwise_rejects_unknown_kind_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown loss kind 'l1'; known: mae, mse, huber"):
        elementwise("l1", PRED, TARGET)
    with pytest.raises(ValueError, match=r"prediction shape \(3,\) differs from target shape \(3, 1\)"):
        elementwise("mae", PRED, TARGET.view(3, 1))   # would silently broadcast to (3, 3)
    with pytest.raises(ValueError, match="huber_delta must be positive"):
        elementwise("huber", PRED, TARGET, huber_delta=0.0)


def test_masked_term_ignores_masked_values_even_nan():
    values = torch.tensor([1.0, float("nan"), 3.0, float("inf")], requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    term = Term.masked(values * 2.0, mask)
    assert term.sum.item() == 8.0 and term.count.item() == 2.0
    assert not term.count.requires_grad and term.count.dtype == values.dtype
    term.sum.backward()
    assert values.grad.tolist() == [2.0, 0.0, 2.0, 0.0]
    # broadcast of a per-row mask to (rows, 3)
    rows = Term.masked(torch.arange(6.0).view(2, 3), torch.tensor([[False], [True]]))
    assert rows.sum.item() == 3 + 4 + 5 and rows.count.item() == 3


def _rank_terms(theta: torch.Tensor, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Term]:
    """Loss values ``|theta * x - 1|`` of each term on one rank."""
    out = {}
    for name, (x, mask) in data.items():
        values = (theta * torch.as_tensor(x) - 1.0).abs()
        out[name] = Term.masked(values, torch.as_tensor(mask))
    return out


def test_combine_over_two_ranks_equals_the_global_mean_value_and_gradient():
    rng = np.random.default_rng(0)
    weights = {"a": 1.0, "b": 10.0}
    # rank 0 holds 5 labelled values of "a" and 1 of "b"; rank 1 holds 1 of "a" and 6 of "b"
    ranks = [
        {"a": (rng.normal(size=7), np.array([1, 1, 1, 0, 1, 1, 0], bool)),
         "b": (rng.normal(size=3), np.array([0, 1, 0], bool))},
        {"a": (rng.normal(size=4), np.array([0, 0, 1, 0], bool)),
         "b": (rng.normal(size=6), np.ones(6, bool))},
    ]
    theta0 = 0.7
    # global mean, by hand on the concatenated data
    expected = 0.0
    expected_grad = 0.0
    for name in ("a", "b"):
        x = np.concatenate([r[name][0][r[name][1]] for r in ranks])
        expected += weights[name] * np.mean(np.abs(theta0 * x - 1.0))
        expected_grad += weights[name] * np.mean(np.sign(theta0 * x - 1.0) * x)

    thetas = [torch.tensor(theta0, dtype=torch.float64, requires_grad=True) for _ in ranks]
    per_rank = [_rank_terms(t, r) for t, r in zip(thetas, ranks)]
    counts = {name: sum(t[name].count for t in per_rank) for name in ("a", "b")}   # the all-reduce
    totals = [combine(t, weights, counts, world_size=2) for t in per_rank]
    for total in totals:
        total.backward()
    ddp_value = sum(float(t.detach()) for t in totals) / 2          # what the ranks log after averaging
    ddp_grad = sum(float(t.grad) for t in thetas) / 2       # DDP's gradient average
    assert ddp_value == pytest.approx(expected, rel=1e-12)
    assert ddp_grad == pytest.approx(expected_grad, rel=1e-12)

    # the naive alternative (average of per-rank means) is measurably different on this data
    naive = sum(sum(weights[k] * float(t[k].mean()) for k in t) for t in per_rank) / 2
    assert abs(naive - expected) > 1e-3


def test_zero_count_terms_contribute_zero_not_nan():
    theta = torch.tensor(2.0, requires_grad=True)
    terms = {"forces": Term.masked(theta * torch.ones(4), torch.zeros(4, dtype=torch.bool)),
             "energy": Term.masked(theta * torch.tensor([1.0, 3.0]), torch.tensor([True, True]))}
    counts = {k: t.count for k, t in terms.items()}
    total = combine(terms, {"forces": 5.0, "energy": 1.0}, counts, world_size=1)
    assert total.item() == pytest.approx(4.0)          # mean(2, 6); forces has no label anywhere
    total.backward()
    assert theta.grad.item() == pytest.approx(2.0) and math.isfinite(theta.grad.item())
    assert terms["forces"].mean().item() == 0.0
    # a term present locally (sum 0, count 0) but with a zero global count in a 2-rank run
    lonely = {"stress": Term.masked(torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.bool))}
    value = combine(lonely, {"stress": 1.0}, {"stress": torch.tensor(0.0)}, world_size=2)
    assert value.item() == 0.0 and value.requires_grad   # still in the graph: every rank runs backward


def test_combine_refuses_terms_without_weight_or_count():
    term = Term.masked(torch.ones(2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"without a weight: \['energy'\]"):
        combine({"energy": term}, {}, {"energy": term.count}, 1)
    with pytest.raises(ValueError, match=r"without a global count: \['energy'\]"):
        combine({"energy": term}, {"energy": 1.0}, {}, 1)
    with pytest.raises(ValueError, match="at least one loss term"):
        combine({}, {}, {}, 1)


def test_count_and_metric_reduction_in_a_real_process_group(tmp_path):
    import torch.distributed as dist

    terms = {"b": Term.masked(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([True, False, True])),
             "a": Term.masked(torch.tensor([0.5]), torch.tensor([True]))}
    local = global_counts(terms)                      # no process group: local counts
    assert {k: v.item() for k, v in local.items()} == {"a": 1.0, "b": 2.0}
    assert reduce_terms(terms) == {"a": (0.5, 1.0), "b": (5.0, 2.0)}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = global_counts(terms)
        assert {k: v.item() for k, v in reduced.items()} == {"a": 1.0, "b": 2.0}
        assert reduce_terms(terms) == {"a": (0.5, 1.0), "b": (5.0, 2.0)}
    finally:
        dist.destroy_process_group()
