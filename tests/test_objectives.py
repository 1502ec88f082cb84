"""Objectives: exact loss values on hand-made outputs (masks, per-atom energies, normalised
properties), the sign of the derivative-denoising target through autograd, DDP-correct totals on a
real model split over two simulated ranks, and a few optimisation steps that reduce each loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.record import Record
from matforge.datasets.synth import synth_records
from matforge.models import losses
from matforge.models.heads import EnergyHead, Head, NoiseHead, PropertyHead, sum_per_graph
from matforge.models.model import AtomisticModel
from matforge.models.objectives import OBJECTIVES, build_objective, combine
from matforge.models.registry import create

CUTOFF = 4.0
SIGMA = 0.1


def record(rid: str, n: int, seed: int, energy=None, forces=False, stress=False, props=None,
           equilibrium=True) -> Record:
    rng = np.random.default_rng(seed)
    return Record(id=rid, numbers=rng.choice([13, 29], size=n).astype(np.int64),
                  positions=rng.uniform(0, 5, (n, 3)), cell=5.0 * np.eye(3), pbc=np.ones(3, dtype=bool),
                  energy=energy, forces=rng.normal(size=(n, 3)) if forces else None,
                  stress=rng.normal(size=(3, 3)) * 0.01 if stress else None, properties=dict(props or {}),
                  equilibrium=equilibrium)


def make_batch(records: list[Record], properties=(), extras: list[dict[str, np.ndarray]] | None = None) -> Batch:
    builder = GraphBuilder(cutoff=CUTOFF, dtype="float64", properties=tuple(properties))
    data = []
    for i, r in enumerate(records):
        d = builder(r, i)
        if extras is not None:
            d.noise = torch.from_numpy(extras[i]["noise"])
            d.noise_mask = torch.from_numpy(extras[i]["noise_mask"])
        data.append(d)
    return Batch.from_data_list(data)


def values(terms: dict[str, losses.Term]) -> dict[str, tuple[float, float]]:
    return {k: (float(t.sum), float(t.count)) for k, t in terms.items()}


# --- energy, forces, stress -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def efs_batch() -> tuple[Batch, list[Record]]:
    recs = [record("a", 2, 0, energy=-10.0, forces=True, stress=True),
            record("b", 4, 1),                                      # no labels at all
            record("c", 3, 2, energy=-6.0, forces=True)]
    return make_batch(recs), recs


def efs_outputs(recs: list[Record], energy: list[float], dforce: np.ndarray, dstress: np.ndarray) -> dict:
    forces = np.concatenate([r.forces if r.forces is not None else np.zeros((r.natoms, 3)) for r in recs]) + dforce
    stress = np.stack([r.stress if r.stress is not None else np.zeros((3, 3)) for r in recs]) + dstress
    return {"energy": torch.tensor(energy, dtype=torch.float64), "forces": torch.from_numpy(forces),
            "stress": torch.from_numpy(stress)}


def test_energy_forces_stress_terms_exact_with_masks(efs_batch):
    batch, recs = efs_batch
    dforce = np.zeros((9, 3))
    dforce[0] = [0.1, -0.2, 0.0]        # structure a (atoms 0-1)
    dforce[2:6] = 1e6                   # structure b has no forces: must not count
    dforce[8] = [0.0, 0.0, 0.3]         # structure c (atoms 6-8)
    dstress = np.zeros((3, 3, 3))
    dstress[0, 0, 1] = 0.02
    dstress[1] = 1e6                    # b has no stress
    dstress[2] = 5.0                    # c has no stress
    # energy errors: a +1 eV over 2 atoms, b unlabelled (wildly off), c -0.6 eV over 3 atoms
    outputs = efs_outputs(recs, [-9.0, 1e6, -6.6], dforce, dstress)
    mae = build_objective("efs", loss_kind="mae")
    assert values(mae.terms(outputs, batch)) == {
        "energy": (pytest.approx(0.5 + 0.2), 2.0),
        "forces": (pytest.approx(0.1 + 0.2 + 0.3), 15.0),        # (2 + 3 atoms) x 3 components
        "stress": (pytest.approx(0.02), 9.0),
    }
    mse = build_objective("efs", loss_kind="mse")
    assert values(mse.terms(outputs, batch)) == {
        "energy": (pytest.approx(0.25 + 0.04), 2.0),
        "forces": (pytest.approx(0.01 + 0.04 + 0.09), 15.0),
        "stress": (pytest.approx(0.0004), 9.0),
    }
    # metrics are MAE in physical units whatever the loss kind
    assert values(mse.metrics(outputs, batch)) == {
        "energy_per_atom_mae": (pytest.approx(0.7), 2.0), "forces_mae": (pytest.approx(0.6), 15.0),
        "stress_mae": (pytest.approx(0.02), 9.0)}
    # the single-process total is Σ w_k mean_k with the default weights 1, 10, 100
    assert float(mae.loss(outputs, batch)) == pytest.approx(0.7 / 2 + 10 * 0.6 / 15 + 100 * 0.02 / 9)


def test_energy_is_compared_per_atom(efs_batch):
    batch, recs = efs_batch
    # 1 eV off on the 2-atom structure and 1.5 eV off on the 3-atom one: both 0.5 eV/atom
    outputs = efs_outputs(recs, [-9.0, 0.0, -4.5], np.zeros((9, 3)), np.zeros((3, 3, 3)))
    terms = build_objective("energy").terms(outputs, batch)
    assert list(terms) == ["energy"]
    assert values(terms)["energy"] == (pytest.approx(1.0), 2.0)
    assert build_objective("energy_forces").weights() == {"energy": 1.0, "forces": 10.0}


# --- denoising ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noised() -> tuple[Batch, np.ndarray, np.ndarray]:
    objective = build_objective("denoise_head", noise_std=SIGMA)
    transform = objective.record_transform()
    recs = [record("p", 4, 3), record("q", 3, 4, equilibrium=False), record("r", 5, 5)]
    pairs = [transform(r, i, 0) for i, r in enumerate(recs)]
    batch = make_batch([p[0] for p in pairs], extras=[p[1] for p in pairs])
    eta = np.concatenate([p[1]["noise"] for p in pairs])
    mask = np.concatenate([p[1]["noise_mask"] for p in pairs])
    assert mask.tolist() == [True] * 4 + [False] * 3 + [True] * 5
    return batch, eta, mask


def test_denoise_head_terms_exact(noised):
    batch, eta, mask = noised
    objective = build_objective("denoise_head", noise_std=SIGMA)
    pred = torch.from_numpy(eta.copy())
    pred[4:7] = 1e6                                          # un-noised structure: ignored
    assert values(objective.terms({"noise": pred}, batch)) == {"noise": (pytest.approx(0.0, abs=1e-12), 27.0)}
    zero = torch.zeros_like(pred)
    expected = np.abs(eta[mask]).sum()
    assert values(objective.terms({"noise": zero}, batch)) == {"noise": (pytest.approx(expected / SIGMA), 27.0)}
    assert values(objective.metrics({"noise": zero}, batch)) == {"denoise_mae": (pytest.approx(expected), 27.0)}


def test_denoise_derivative_target_is_the_restoring_force(noised):
    batch, eta, mask = noised
    objective = build_objective("denoise_derivative", noise_std=SIGMA)
    assert objective.needs_forces and objective.create_graph and not objective.needs_stress
    restoring = torch.from_numpy(-eta / SIGMA)          # F = -η/σ points back to the relaxed structure
    assert values(objective.terms({"forces": restoring}, batch)) == {"noise": (pytest.approx(0.0, abs=1e-12), 27.0)}
    assert values(objective.metrics({"forces": restoring}, batch)) == {
        "denoise_mae": (pytest.approx(0.0, abs=1e-12), 27.0)}
    pushing = -restoring                                # F = +η/σ pushes further away
    expected = 2 * np.abs(eta[mask]).sum() / SIGMA
    assert values(objective.terms({"forces": pushing}, batch)) == {"noise": (pytest.approx(expected), 27.0)}
    # the implied noise estimate is -σ F, compared in Å
    assert values(objective.metrics({"forces": pushing}, batch))["denoise_mae"][0] == pytest.approx(expected * SIGMA)


class SpringEnergy(Head):
    """Test head: a harmonic spring of stiffness k (eV/Å²) and rest length d0 (Å) on every pair,
    E = Σ_pairs ½ k (|r_ij| - d0)² (each pair appears as two directed edges, hence ¼ per edge)."""

    kind = "spring_test"

    def __init__(self, k: float, d0: float) -> None:
        super().__init__()
        self.k, self.d0 = k, d0

    def forward(self, out, inputs) -> dict[str, torch.Tensor]:
        per_edge = 0.25 * self.k * (inputs.edge_length - self.d0) ** 2
        atom = torch.zeros(inputs.z.shape[0], dtype=per_edge.dtype).index_add(0, inputs.edge_index[1], per_edge)
        return {"energy": sum_per_graph(atom, inputs.batch, inputs.num_graphs)}


@pytest.mark.parametrize("delta", [0.03, -0.05])
def test_denoise_derivative_sign_through_autograd_on_a_spring(delta):
    """A dimer at its rest length d0, noised along the bond by η = (+δ, -δ) (centred): the spring's
    force -∂E/∂r on atom 0 is -2kδ x̂, exactly the target -η/σ when k = 1/(2σ), for any δ."""
    d0 = 2.0
    dimer = Record(id="dimer", numbers=np.array([29, 29]), positions=np.array([[delta, 0, 0], [d0 - delta, 0, 0]]),
                   cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool), equilibrium=True)
    eta = np.array([[delta, 0.0, 0.0], [-delta, 0.0, 0.0]])
    batch = make_batch([dimer], extras=[{"noise": eta, "noise_mask": np.ones(2, dtype=bool)}])
    objective = build_objective("denoise_derivative", noise_std=SIGMA)
    backbone = create("painn", hidden=4, num_interactions=1, cutoff=CUTOFF)
    for k, expected in ((1 / (2 * SIGMA), 0.0), (-1 / (2 * SIGMA), 2 * abs(delta) / SIGMA * 2 / 6)):
        model = AtomisticModel(backbone, {"energy": SpringEnergy(k, d0)}).double()
        outputs = model(batch, **objective.forward_options(training=False))
        (total, count), = values(objective.terms(outputs, batch)).values()
        assert count == 6
        assert total / count == pytest.approx(expected, abs=1e-12)   # a flipped sign costs 2|η|/σ per bond component


# --- combined (multi-property) ----------------------------------------------------------------------

def test_combined_masks_missing_labels_and_normalises():
    recs = [record("a", 2, 0, props={"gap": 1.0, "k": 3.0}),
            record("b", 3, 1, props={"k": 2.0}),               # no gap
            record("c", 2, 2, props={"gap": 4.0})]             # no k
    batch = make_batch(recs, properties=("gap", "k"))
    assert batch.y_mask.tolist() == [[True, True], [False, True], [True, False]]
    objective = build_objective("combined", properties=["gap", "k"], property_weights={"k": 3.0})
    assert objective.properties == ("gap", "k")
    assert objective.weights() == {"property:gap": 1.0, "property:k": 3.0}
    backbone = create("painn", hidden=4, num_interactions=1, cutoff=CUTOFF)
    model = AtomisticModel(backbone, objective.build_heads(backbone))
    objective.apply_fit(model, {"properties": {"gap": {"mean": 2.0, "std": 2.0, "count": 2},
                                               "k": {"mean": 2.5, "std": 0.5, "count": 2}}})
    pred = torch.tensor([[1.5, 2.0], [1e6, 2.5], [3.0, -1e6]], dtype=torch.float64)
    outputs = {"properties": pred}
    assert values(objective.terms(outputs, batch)) == {
        "property:gap": (pytest.approx((0.5 + 1.0) / 2.0), 2.0),   # normalised by std 2
        "property:k": (pytest.approx((1.0 + 0.5) / 0.5), 2.0),     # normalised by std 0.5
    }
    assert values(objective.metrics(outputs, batch)) == {"gap_mae": (pytest.approx(1.5), 2.0),
                                                         "k_mae": (pytest.approx(1.5), 2.0)}
    head = model.heads["properties"]
    assert head.mean.tolist() == [2.0, 2.5] and head.std.tolist() == [2.0, 0.5]
    assert float(objective.loss(outputs, batch)) == pytest.approx(1.5 / 2 / 2 + 3.0 * 3.0 / 2)


# --- heads, flags, errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, head_types, flags", [
    ("energy", {"energy": EnergyHead}, (False, False, False)),
    ("energy_forces", {"energy": EnergyHead}, (True, False, True)),
    ("efs", {"energy": EnergyHead}, (True, True, True)),
    ("denoise_head", {"noise": NoiseHead}, (False, False, False)),
    ("denoise_derivative", {"energy": EnergyHead}, (True, False, True)),
    ("combined", {"properties": PropertyHead}, (False, False, False)),
])
def test_heads_and_what_the_model_must_compute(name, head_types, flags):
    objective = build_objective(name, properties=["gap"])
    assert objective.name == name
    for arch, vector in (("painn", True), ("cgcnn_smooth", False)):
        heads = objective.build_heads(create(arch, hidden=8, num_interactions=1, cutoff=CUTOFF))
        assert {k: type(h) for k, h in heads.items()} == head_types
        if name == "denoise_head":
            assert heads["noise"].use_vector is vector
    assert (objective.needs_forces, objective.needs_stress, objective.create_graph) == flags
    assert objective.forward_options(training=False)["create_graph"] is False
    transform = objective.record_transform()
    assert (transform is not None) == name.startswith("denoise")
    if transform is not None:
        assert (transform.std, transform.equilibrium_only) == (0.1, True)


def test_build_objective_errors_and_weights():
    assert set(OBJECTIVES) == {"energy", "energy_forces", "efs", "denoise_derivative", "denoise_head", "combined"}
    assert build_objective("efs", weights={"forces": 2.0, "noise": 9.0}).weights() == {
        "energy": 1.0, "forces": 2.0, "stress": 100.0}
    assert build_objective("denoise_head", weights={"noise": 4.0}).weights() == {"noise": 4.0}
    with pytest.raises(ValueError, match="unknown objective 'forces'; known: energy, energy_forces"):
        build_objective("forces")
    with pytest.raises(ValueError, match=r"unknown loss weight\(s\) \['force'\]"):
        build_objective("efs", weights={"force": 1.0})
    with pytest.raises(ValueError, match="needs at least one property name"):
        build_objective("combined")
    with pytest.raises(ValueError, match=r"not learnt: \['gapp'\]"):
        build_objective("combined", properties=["gap"], property_weights={"gapp": 2.0})
    with pytest.raises(ValueError, match="unknown loss kind 'l2'"):
        build_objective("energy", loss_kind="l2")
    with pytest.raises(ValueError, match="noise_std must be a positive number"):
        build_objective("denoise_head", noise_std=-0.1)
    assert combine is losses.combine


def test_missing_inputs_are_named(efs_batch):
    batch, recs = efs_batch
    with pytest.raises(ValueError, match="needs batch.noise and batch.noise_mask from its record transform"):
        build_objective("denoise_head").terms({"noise": torch.zeros(9, 3)}, batch)
    with pytest.raises(ValueError, match=r"needs outputs\['forces'\]: call the model with \*\*objective"):
        build_objective("efs").terms({"energy": torch.zeros(3)}, batch)
    with pytest.raises(ValueError, match=r"build graphs with GraphConfig\(properties=\['gap'\]\)"):
        build_objective("combined", properties=["gap"]).terms({"properties": torch.zeros(3, 1)}, batch)


# --- real models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_records() -> list[Record]:
    recs = list(synth_records(6, seed=0, max_atoms=8))
    out = []
    for k, r in enumerate(recs):
        props = {"volume_per_atom": r.volume / r.natoms}
        if k != 2:
            props["mean_z"] = float(np.mean(r.numbers))
        out.append(dataclasses.replace(r, properties=props))
    return out


def model_for(objective, arch: str = "painn", seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    backbone = create(arch, hidden=8, num_interactions=1, cutoff=CUTOFF)
    return AtomisticModel(backbone, objective.build_heads(backbone), elements=[]).double()


def objective_batch(objective, records: list[Record], epoch: int = 0) -> Batch:
    transform = objective.record_transform()
    if transform is None:
        return make_batch(records, properties=objective.properties)
    pairs = [transform(r, i, epoch) for i, r in enumerate(records)]
    return make_batch([p[0] for p in pairs], objective.properties, [p[1] for p in pairs])


def test_two_rank_split_of_a_real_batch_gives_the_full_batch_loss_and_gradient(tiny_records):
    objective = build_objective("efs")
    model = model_for(objective)
    objective.fit(tiny_records, model)
    options = objective.forward_options()
    full = objective_batch(objective, tiny_records)
    whole = objective.loss(model(full, **options), full)
    whole_grad = torch.autograd.grad(whole, list(model.parameters()), allow_unused=True, materialize_grads=True)

    shards = [objective_batch(objective, tiny_records[:2]), objective_batch(objective, tiny_records[2:])]
    rank_terms = [objective.terms(model(b, **options), b) for b in shards]
    assert rank_terms[0]["forces"].count != rank_terms[1]["forces"].count     # unequal atoms per rank
    counts = {k: rank_terms[0][k].count + rank_terms[1][k].count for k in rank_terms[0]}
    totals = [combine(t, objective.weights(), counts, world_size=2) for t in rank_terms]
    grads = [torch.autograd.grad(t, list(model.parameters()), allow_unused=True, materialize_grads=True)
             for t in totals]
    assert float(sum(totals).detach()) / 2 == pytest.approx(float(whole.detach()), rel=1e-10)
    for g0, g1, gw in zip(*grads, whole_grad):
        torch.testing.assert_close((g0 + g1) / 2, gw, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name, arch", [
    ("energy", "painn"), ("energy_forces", "cgcnn_smooth"), ("efs", "painn"),
    ("denoise_head", "painn"), ("denoise_head", "cgcnn_smooth"), ("denoise_derivative", "painn"),
    ("combined", "cgcnn_smooth"),
])
def test_a_few_optimisation_steps_reduce_the_loss(tiny_records, name, arch):
    objective = build_objective(name, equilibrium_only=False, properties=["volume_per_atom", "mean_z"])
    model = model_for(objective, arch)
    objective.fit(tiny_records, model)
    batch = objective_batch(objective, tiny_records)
    options = objective.forward_options()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)

    def loss() -> torch.Tensor:
        return objective.loss(model(batch, **options), batch)

    before = float(loss().detach())
    for _ in range(12):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    after = float(loss().detach())
    assert np.isfinite(before) and after < 0.8 * before, (before, after)


# --- counts known before the forward pass ----------------------------------------------------------------

EXPECTED_COUNTS = {
    "energy": {"energy": 2.0},
    "energy_forces": {"energy": 2.0, "forces": 15.0},                 # (2 + 3 atoms) x 3 components
    "efs": {"energy": 2.0, "forces": 15.0, "stress": 9.0},            # one structure's 9 components
    "denoise_head": {"noise": 15.0},                                  # relaxed a and c: 5 atoms x 3
    "denoise_derivative": {"noise": 15.0},
    "combined": {"property:gap": 2.0, "property:k": 2.0},
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_counts_from_the_batch_alone_equal_the_counts_of_the_terms(name):
    recs = [record("a", 2, 0, energy=-10.0, forces=True, stress=True, props={"gap": 1.0}),
            record("b", 4, 1, equilibrium=False, props={"k": 2.0}),            # no E/F/S, not relaxed
            record("c", 3, 2, energy=-6.0, forces=True, props={"gap": 4.0, "k": 1.0})]
    objective = build_objective(name, noise_std=SIGMA, properties=["gap", "k"])
    batch = objective_batch(objective, recs)
    counts = objective.counts(batch)
    terms = objective.terms(model_for(objective)(batch, **objective.forward_options()), batch)
    assert list(counts) == list(terms)
    assert all(c.dtype == torch.float64 and not c.requires_grad for c in counts.values())
    assert {k: float(c) for k, c in counts.items()} == {k: float(t.count) for k, t in terms.items()}
    assert {k: float(c) for k, c in counts.items()} == EXPECTED_COUNTS[name]
