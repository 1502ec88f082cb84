"""The measured cost weights of the step balance: the estimated atoms, edges and pairs (exact and
against real graphs), calibration batches (exact), the non-negative fit (exact recovery, refusals),
the timing leaving the model untouched, the wiring from structures to weights, and which weights a
run uses (config, checkpoint, measurement)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from matforge.datasets.graphs import GraphConfig
from matforge.datasets.loader import GraphDataset
from matforge.datasets.shard_dataset import open_dataset
from matforge.datasets.step_balance import cost_features, neighbours_per_atom, structure_costs
from matforge.pretrain import cost_calibration
from matforge.training.checkpoint import TrainState
from matforge.pretrain.config import ConfigError, load_config
from matforge.pretrain.cost_calibration import (calibrate_cost_weights, calibration_groups, count_pairs,
                                                fit_cost_weights, run_balance_weights, time_training_steps)
from matforge.pretrain.worker import build_model, build_objective


def test_cost_features_and_weighted_costs_exact():
    sphere = 4.0 / 3.0 * math.pi * 2.0 ** 3
    natoms, volume = np.array([2, 4, 3]), np.array([10.0, 40.0, np.nan])
    k = neighbours_per_atom(natoms, volume, 2.0)
    assert k.tolist() == pytest.approx([0.2 * sphere, 0.1 * sphere, 2.0])
    features = cost_features(natoms, volume, 2.0)
    # pairs: at most n partners per atom (2·min(2, 6.7) = 4), else one per neighbour (4·3.35); molecule: p = e
    np.testing.assert_allclose(features, [[2, 2 * k[0], 4], [4, 4 * k[1], 4 * k[1]], [3, 6, 6]], rtol=1e-12)
    assert structure_costs(natoms, volume, 2.0, (0.5, 1.0, 7.0)).tolist() == pytest.approx(
        (features @ np.array([0.5, 1.0, 7.0])).tolist())
    assert structure_costs(natoms, volume, 2.0).tolist() == pytest.approx((natoms * (1 + k)).tolist())
    assert cost_features(natoms, None, 2.0) is None
    for bad in ((-1.0, 1.0, 0.0), (math.nan, 1.0, 0.0), (0.0, 0.0, 0.0), (1.0, 1.0)):
        with pytest.raises(ValueError, match="cost weights"):
            structure_costs(natoms, volume, 2.0, bad)


def test_estimated_pairs_follow_the_real_graphs(synth_dir: Path):
    records = open_dataset(synth_dir)
    graphs = GraphDataset(records, GraphConfig(cutoff=5.0))
    features = cost_features(records.natoms, records.volume, 5.0)
    real = [graphs.collate([i]) for i in range(len(records))]
    pairs = np.array([count_pairs(b.edge_index, int(b.num_nodes)) for b in real])
    edges = np.array([b.edge_index.shape[1] for b in real])
    assert (pairs <= records.natoms ** 2).all() and (pairs <= edges).all()
    assert np.corrcoef(features[:, 2], pairs)[0, 1] > 0.95
    assert np.corrcoef(features[:, 1], edges)[0, 1] > 0.95


def test_count_pairs_counts_images_of_a_neighbour_once():
    edge_index = torch.tensor([[1, 1, 1, 0, 0, 2], [0, 0, 2, 1, 1, 2]])
    assert count_pairs(edge_index, 3) == 4
    assert count_pairs(torch.zeros((2, 0), dtype=torch.long), 3) == 0


def test_calibration_groups_take_densest_sparsest_largest_smallest_within_each_budget():
    natoms = np.array([4, 4, 4, 4, 4, 4, 9])
    neighbours = np.array([10.0, 50.0, 20.0, 40.0, 30.0, 60.0, 5.0])
    groups = calibration_groups(natoms, neighbours, max_atoms=12)
    # budget 12: densest 5, 1, 3; sparsest 6 (9 atoms) and no 4-atom one fits; largest 6 alone;
    # smallest 0, 1, 2. Budget 6: densest 5; sparsest 6 (a batch always gets its first); largest 6; smallest 0
    assert groups == [[1, 3, 5], [6], [6], [0, 1, 2], [5], [6], [6], [0]]
    assert calibration_groups(np.array([3, 3, 3]), np.array([1.0, 2.0, 3.0]), 12) == []
    with pytest.raises(ValueError, match="shape"):
        calibration_groups(natoms, neighbours[:3], 12)


def test_fit_recovers_the_weights_exactly_and_refuses_what_it_cannot_use():
    atoms, edges, pairs = [256, 250, 256, 240, 128, 126, 128, 120], [13000, 4500, 9000, 9500, 6500, 2300, 4600, 4700], \
        [3000, 2500, 8000, 900, 1500, 1200, 4000, 500]
    seconds = [0.004 + 2e-6 * n + 1e-6 * e + 7e-6 * p for n, e, p in zip(atoms, edges, pairs)]
    fit = fit_cost_weights(atoms, edges, pairs, seconds)
    assert fit.weights == pytest.approx((2e-6, 1e-6, 7e-6), rel=1e-6)
    assert fit.seconds_per_step == pytest.approx(0.004, rel=1e-6)
    assert "7.000 µs per atom pair" in fit.describe()
    # a negative cost is not allowed: a time falling with pairs gets a pair weight of 0
    falling = fit_cost_weights(atoms, edges, pairs, [0.004 + 1e-6 * e - 1e-7 * p for e, p in zip(edges, pairs)])
    assert falling.weights is not None and falling.weights[2] == 0.0
    flat = fit_cost_weights(atoms, edges, pairs, [0.05] * 8)
    assert flat.weights is None and "does not grow" in flat.reason
    assert fit_cost_weights([], [], [], []).weights is None
    with pytest.raises(ValueError, match="equal-length"):
        fit_cost_weights([1, 2], [3], [1, 2], [0.1, 0.2])


def _model_and_graphs(directory: Path, name: str, hyperparameters: str, objective: str = "efs"):
    cfg = load_config("quickstart", [f"data.train={directory}", f"model.name={name}", f"objective={objective}",
                                     f"model.hyperparameters={hyperparameters}"])
    records = open_dataset(directory)
    obj = build_objective(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, obj, records.manifest.elements)
    config = GraphConfig(cutoff=model.backbone.cutoff, max_neighbors=model.backbone.max_neighbors,
                         properties=tuple(obj.properties), dtype=cfg.train.dtype)
    transform = obj.record_transform()
    graphs = GraphDataset(records, config, **({"transform": transform} if transform is not None else {}))
    return model, obj, graphs, records


@pytest.mark.parametrize("name,hyperparameters,objective", [
    ("cgcnn", "{atom_fea_len: 8, n_conv: 1, cutoff: 4.0}", "energy"),   # BatchNorm buffers
    ("painn", "{hidden: 8, num_interactions: 1, cutoff: 4.0}", "efs"),                # double backward
    ("painn", "{hidden: 8, num_interactions: 1, cutoff: 4.0}", "denoise_derivative"),         # noisy records
])
def test_timing_leaves_model_gradients_and_rng_as_they_were(synth_dir: Path, name: str, hyperparameters: str,
                                                            objective: str):
    model, obj, graphs, _ = _model_and_graphs(synth_dir, name, hyperparameters, objective)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(model.parameters())
    first.grad = torch.full_like(first, 0.5)
    rng = torch.get_rng_state()
    seconds = time_training_steps(model, obj, [graphs.collate([0, 1, 2]), graphs.collate([3])], torch.device("cpu"),
                                  repeats=2)
    assert len(seconds) == 2 and all(0 < s < 60 for s in seconds)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)    # running statistics included
    assert torch.equal(first.grad, torch.full_like(first, 0.5))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training
    with pytest.raises(ValueError, match="repeats"):
        time_training_steps(model, obj, [], torch.device("cpu"), repeats=0)


def test_calibration_fits_the_timed_calibration_batches(synth_dir: Path, monkeypatch: pytest.MonkeyPatch):
    model, obj, graphs, records = _model_and_graphs(synth_dir, "painn", "{hidden: 8, num_interactions: 1, cutoff: 4.0}")
    neighbours = neighbours_per_atom(records.natoms, records.volume, 4.0)
    timed: list[tuple[int, int, int]] = []

    def fake_timing(model, objective, batches, device, repeats=3):
        timed.extend((int(b.num_nodes), int(b.edge_index.shape[1]), count_pairs(b.edge_index, int(b.num_nodes)))
                     for b in batches)
        return [0.003 + 3e-6 * n + 1e-6 * e + 6e-6 * p for n, e, p in timed]

    monkeypatch.setattr(cost_calibration, "time_training_steps", fake_timing)
    averaged: list[torch.Tensor] = []

    def average(seconds: torch.Tensor) -> torch.Tensor:
        averaged.append(seconds)
        return seconds * 2          # as if the other rank had taken three times as long

    fit = calibrate_cost_weights(model, obj, graphs.collate, records.natoms, neighbours, 48, torch.device("cpu"),
                                 average_over_ranks=average)
    groups = calibration_groups(records.natoms, neighbours, 48)
    assert len(groups) == 8 and [n for n, _, _ in timed] == [int(records.natoms[g].sum()) for g in groups]
    assert [e for _, e, _ in timed] == [int(graphs.collate(g).edge_index.shape[1]) for g in groups]
    assert len(averaged) == 1 and averaged[0].dtype == torch.float64
    assert fit.weights == pytest.approx((6e-6, 2e-6, 12e-6), rel=1e-5)
    assert fit.seconds_per_step == pytest.approx(0.006, rel=1e-5)


def test_real_calibration_of_the_quickstart_model(synth_dir: Path):
    model, obj, graphs, records = _model_and_graphs(synth_dir, "painn", "{hidden: 32, num_interactions: 2, cutoff: 5.0}")
    neighbours = neighbours_per_atom(records.natoms, records.volume, 5.0)
    fit = calibrate_cost_weights(model, obj, graphs.collate, records.natoms, neighbours, 128, torch.device("cpu"),
                                 repeats=2)
    assert len(fit.seconds) == 8 and all(s > 0 for s in fit.seconds)
    density = np.asarray(fit.edges) / np.asarray(fit.atoms)
    assert density[0] > density[1] and density[4] > density[5]        # dense vs sparse batches
    assert fit.weights is not None and all(w >= 0 for w in fit.weights) and any(w > 0 for w in fit.weights)


def test_a_run_uses_the_configured_then_the_saved_then_measured_weights(synth_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    model, obj, graphs, records = _model_and_graphs(synth_dir, "painn", "{hidden: 8, num_interactions: 1, cutoff: 4.0}")
    calls: list[int] = []

    def fake_calibrate(*args, **kwargs):
        calls.append(1)
        return cost_calibration.CostFit((0.0, 1.0, 7.0), 0.0, (), (), (), ())

    monkeypatch.setattr(cost_calibration, "calibrate_cost_weights", fake_calibrate)
    args = (model, obj, records, graphs.config, None, torch.device("cpu"), 1, 0)
    base = ["data.train=" + str(synth_dir)]
    configured = load_config("quickstart", base + ["data.balance_weights=[1, 2, 3]"])
    assert run_balance_weights(configured, TrainState(balance_weights=[5.0, 1.0, 0.0]), *args) == [1.0, 2.0, 3.0]
    default = load_config("quickstart", base)
    assert run_balance_weights(default, TrainState(), *args) == [1.0, 1.0, 0.0]   # not measured unless asked
    plain = load_config("quickstart", base + ["data.calibrate_balance=true"])
    assert run_balance_weights(plain, TrainState(balance_weights=[5.0, 1.0, 0.0]), *args) == [5.0, 1.0, 0.0]
    assert calls == []
    assert run_balance_weights(plain, TrainState(), *args) == [0.0, 1.0, 7.0] and calls == [1]
    monkeypatch.setattr(cost_calibration, "calibrate_cost_weights",
                        lambda *a, **k: cost_calibration.CostFit(None, 0.0, (), (), (), (), reason="flat"))
    assert run_balance_weights(plain, TrainState(), *args) == [1.0, 1.0, 0.0]
    for bad in ("[1, -2, 3]", "[0, 0, 0]", "[1, 2]"):
        with pytest.raises(ConfigError, match="balance_weights"):
            load_config("quickstart", base + [f"data.balance_weights={bad}"])
