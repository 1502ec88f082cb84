"""PaiNN backbone: exact equivariance of its vector features, harmonic energy around symmetric
configurations (the soft vector norm), freeze groups, and rebuilding from its hyper-parameters; the
pair-aggregated implementation against a plain per-edge reference of the module docstring's
equations (outputs, energy/forces/stress and the parameter gradients of a force-training loss).
Energy/forces/stress physics is in ``test_model_efs.py``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch_geometric.data import Batch

import matforge.models.painn as painn_module
from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.readers.structures import from_cif_text
from matforge.datasets.record import Record
from matforge.models.base import Backbone, BackboneOutput, GraphInputs, edge_vectors
from matforge.models.heads import EnergyHead
from matforge.models.model import AtomisticModel
from matforge.models.painn import PaiNN, atom_pairs
from matforge.models.registry import create

CUTOFF = 4.5
SMALL = dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8)


def _record(numbers, positions, cell) -> Record:
    return Record(id="t", numbers=np.asarray(numbers, dtype=np.int64), positions=np.asarray(positions, float),
                  cell=np.asarray(cell, float), pbc=np.ones(3, dtype=bool))


def rocksalt_rattled() -> Record:
    """NaCl conventional cell (8 atoms, a = 5.64 Å), rattled by 0.1 Å (fixed seed)."""
    a = 5.64
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.vstack([fcc, fcc + [0.5, 0, 0]])
    rng = np.random.default_rng(0)
    return _record([11] * 4 + [17] * 4, frac * a + 0.1 * rng.standard_normal((8, 3)), a * np.eye(3))


def inputs_of(record: Record) -> GraphInputs:
    data = Batch.from_data_list([GraphBuilder(cutoff=CUTOFF, dtype="float64")(record)])
    vec, _, _ = edge_vectors(data.pos, data.cell, data.shifts, data.edge_index, data.batch)
    return GraphInputs(z=data.z, edge_index=data.edge_index, edge_vec=vec, batch=data.batch, num_graphs=1)


def backbone(seed: int = 0, **overrides) -> PaiNN:
    torch.manual_seed(seed)
    return PaiNN(**{**SMALL, **overrides}).double()


def random_orthogonal(seed: int, proper: bool) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
def test_scalars_invariant_and_vectors_equivariant(proper):
    record = rocksalt_rattled()
    q = random_orthogonal(5, proper)
    moved = _record(record.numbers, record.positions @ q.T, record.cell @ q.T)
    model = backbone()
    with torch.no_grad():
        out = model(inputs_of(record))
        out_q = model(inputs_of(moved))
    assert out.node.shape == (8, 16) and out.vector.shape == (8, 3, 16)
    assert out.vector.abs().max() > 1e-2, "vector features ~0: equivariance would be vacuous"
    torch.testing.assert_close(out_q.node, out.node, rtol=1e-10, atol=1e-10)
    rotated = torch.einsum("kl,nlf->nkf", torch.from_numpy(q), out.vector)
    torch.testing.assert_close(out_q.vector, rotated, rtol=1e-10, atol=1e-10)


def _force_constant(model: AtomisticModel, x: float) -> float:
    """F_x / x for atom 0 of perfect bcc Mo displaced by x Å along x (secant spring constant)."""
    a = 3.16
    record = _record([42, 42], [[x, 0.0, 0.0], [a / 2, a / 2, a / 2]], a * np.eye(3))
    out = model(Batch.from_data_list([GraphBuilder(cutoff=CUTOFF, dtype="float64")(record)]), forces=True)
    return float(out["forces"][0, 0].detach()) / x


def test_energy_is_harmonic_around_a_symmetric_configuration():
    """In perfect bcc every vector feature vanishes by inversion symmetry. With the default soft
    norm (δ = 1) the force is linear in a small displacement: F/x is the same from 1e-5 to 1e-2 Å.
    The usual δ = 1e-8 shows why the default matters: there F/x changes several-fold."""
    smooth = AtomisticModel(backbone(), {"energy": EnergyHead(16, hidden=16)}).double()
    k = [_force_constant(smooth, x) for x in (1e-5, 1e-4, 1e-3, 1e-2)]
    assert abs(k[0]) > 1e-3
    np.testing.assert_allclose(k[1:], k[0], rtol=1e-3)

    kinked = AtomisticModel(backbone(norm_epsilon=1e-8), {"energy": EnergyHead(16, hidden=16)}).double()
    k8 = [_force_constant(kinked, x) for x in (1e-5, 1e-2)]
    assert abs(k8[0] / k8[1]) > 2.0


def test_isolated_atom_keeps_zero_vectors():
    lonely = _record([8], [[0.0, 0.0, 0.0]], 20.0 * np.eye(3))
    out = backbone()(inputs_of(lonely))
    assert torch.isfinite(out.node).all()
    assert out.vector.abs().max() == 0.0


def test_freeze_groups_partition_the_parameters():
    model = backbone(num_interactions=3)
    groups = model.freeze_groups()
    assert [name for name, _ in groups] == ["embedding", "block.0", "block.1", "block.2"]
    ids = [id(p) for _, modules in groups for m in modules for p in m.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert groups[0][1] == [model.embedding]


def test_rebuilt_from_hparams_gives_the_same_output():
    model = create("painn", **SMALL, norm_epsilon=0.5).double()
    assert model.hparams["norm_epsilon"] == 0.5 and model.arch == "painn" and model.smooth
    clone = create("painn", **model.hparams).double()
    clone.load_state_dict(model.state_dict(), strict=True)
    inputs = inputs_of(rocksalt_rattled())
    with torch.no_grad():
        torch.testing.assert_close(clone(inputs).node, model(inputs).node)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_interactions=0), "num_interactions"),
    (dict(norm_epsilon=0.0), "norm_epsilon"),
    (dict(envelope="square"), "unknown envelope"),
    (dict(cutoff=-1.0), "cutoff must be positive"),
])
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PaiNN(**{**SMALL, **kwargs})


# ----------------------------------------------------------------------------------------------
# the pair-aggregated implementation equals the per-edge equations


class ReferencePaiNN(Backbone):
    """PaiNN written per edge, straight from the module docstring, on the parameters of ``model``:
    filter ``(e(r) W_rbf + b) · u(r)``, messages ``φ_m(s_j) ⊙ W(r)`` per edge, summed per centre."""

    arch = "painn_reference"

    def __init__(self, model: PaiNN) -> None:
        super().__init__()
        self.model = model

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    def freeze_groups(self):
        return self.model.freeze_groups()

    def forward(self, inputs: GraphInputs) -> BackboneOutput:
        m = self.model
        f = m.embedding_dim
        j, i = inputs.edge_index[0], inputs.edge_index[1]
        r = torch.sqrt((inputs.edge_vec**2).sum(dim=-1))
        unit = inputs.edge_vec / r.unsqueeze(-1)
        k = torch.arange(1, m.radial.num_basis + 1, dtype=r.dtype)
        bessel = math.sqrt(2.0 / m.cutoff) * torch.sin(k * math.pi * r.unsqueeze(-1) / m.cutoff) / r.unsqueeze(-1)
        u = m.envelope(r).unsqueeze(-1)
        s = m.embedding(inputs.z)
        v = torch.zeros(s.shape[0], 3, f, dtype=s.dtype)
        for block in m.blocks:
            msg, upd = block.message, block.update
            weight = msg.filter.weight                                     # (blocks·F, K+1) = [W_rbf | b]
            filt = (bessel @ weight[:, :-1].T + weight[:, -1]) * u          # (E, blocks·F)
            x = msg.phi(s)[j] * filt
            x_s, x_vs = x[:, :f], x[:, f:2 * f]
            dv_edge = x_vs.unsqueeze(1) * unit.unsqueeze(-1)
            if not msg.first:
                dv_edge = dv_edge + x[:, 2 * f:].unsqueeze(1) * v[j]
            s = s + torch.zeros_like(s).index_add(0, i, x_s)
            v = v + torch.zeros_like(v).index_add(0, i, dv_edge)
            uu, vv = upd.vector_mix(v)[..., :f], upd.vector_mix(v)[..., f:]
            a = upd.phi(torch.cat([s, torch.sqrt((vv**2).sum(dim=1) + upd.norm_epsilon)], dim=-1))
            s = s + a[:, 2 * f:] + a[:, f:2 * f] * (uu * vv).sum(dim=1)
            v = v + a[:, :f].unsqueeze(1) * uu
        return BackboneOutput(node=s, vector=v)


def perov5_cells() -> list[Record]:
    """The two perov5 cells of the physics fixtures (5 atoms; ~8 periodic images per atom pair)."""
    with open(Path(__file__).parent / "fixtures" / "physics" / "perov5_val_subset.csv", newline="") as f:
        arrays = [from_cif_text(row["cif"]) for row in csv.DictReader(f)]
    return [_record(numbers, positions, cell) for numbers, positions, cell, _ in arrays]


def cluster_in_a_box() -> Record:
    """Six atoms in a 20 Å box: no periodic image within the cutoff, so every pair is one edge."""
    rng = np.random.default_rng(3)
    positions = 10.0 + np.array([[0, 0, 0], [2.1, 0, 0], [0, 2.2, 0], [0, 0, 2.0], [2, 2, 0], [1, 1, 2.3]])
    return _record([8, 1, 1, 6, 7, 8], positions + 0.1 * rng.standard_normal((6, 3)), 20.0 * np.eye(3))


def rattled(record: Record, seed: int) -> Record:
    rng = np.random.default_rng(seed)
    return _record(record.numbers, record.positions + 0.05 * rng.standard_normal(record.positions.shape), record.cell)


def one_atom_cell() -> Record:
    a = 3.16
    cell = 0.5 * a * np.array([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]) @ np.diag([1.02, 0.99, 1.03])
    return _record([42], [[0.3, -0.2, 0.1]], cell)


def periodic_structures() -> list[Record]:
    cells = perov5_cells()
    return [rattled(cells[0], 1), rattled(cells[1], 2), rocksalt_rattled(), one_atom_cell()]


def batch_of(records: list[Record]) -> Batch:
    return Batch.from_data_list([GraphBuilder(cutoff=CUTOFF, dtype="float64")(r) for r in records])


def model_pair(seed: int = 0) -> tuple[AtomisticModel, AtomisticModel]:
    """The implementation and the reference on the very same parameters (float64, 3 interactions)."""
    painn = backbone(seed, num_interactions=3)
    with torch.no_grad():  # larger weights: a strongly non-linear function of the geometry
        for p in painn.parameters():
            p.mul_(2.0)
    head = EnergyHead(16, hidden=16, scale=3.0).double()
    return AtomisticModel(painn, {"energy": head}), AtomisticModel(ReferencePaiNN(painn), {"energy": head})


def efs_loss(out: dict[str, Tensor]) -> Tensor:
    """A force-training loss with fixed non-trivial targets (the double backward of training)."""
    gen = torch.Generator().manual_seed(7)
    forces_target = torch.randn(out["forces"].shape, generator=gen, dtype=torch.float64)
    stress_target = torch.randn(out["stress"].shape, generator=gen, dtype=torch.float64)
    return ((out["energy"] - 1.0) ** 2).sum() + ((out["forces"] - forces_target) ** 2).sum() \
        + 10.0 * ((out["stress"] - stress_target) ** 2).sum()


def assert_relative(actual: Tensor, expected: Tensor, what: str, rtol: float = 1e-10) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    assert scale > 1e-6, f"{what}: reference is ~0, the comparison would be vacuous"
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"{what}: max deviation {err:.3e} > {rtol} × {scale:.3e}"


# direction term per pair (default for these structures), forced per pair, forced per edge
DIRECTION_MODES = {"default": painn_module.PAIR_DIRECTION_MIN_EDGES, "per-pair": 1.0, "per-edge": math.inf}


@pytest.mark.parametrize("records", [periodic_structures(), [cluster_in_a_box()]], ids=["periodic", "cluster"])
@pytest.mark.parametrize("mode", list(DIRECTION_MODES))
def test_same_function_and_training_gradients_as_the_per_edge_equations(records, mode, monkeypatch):
    monkeypatch.setattr(painn_module, "PAIR_DIRECTION_MIN_EDGES", DIRECTION_MODES[mode])
    model, reference = model_pair()
    batch = batch_of(records)
    graph = reference.backbone.model.message_geometry(inputs_of_batch(batch))
    # the parametrisation reaches the code paths it names
    if len(records) == 1:
        assert graph.pairs_are_edges and graph.pair_directional is None
    else:
        assert graph.pair_index.shape[1] < batch.edge_index.shape[1] / 4
        assert (graph.pair_directional is None) == (mode == "per-edge")

    params = [p for p in model.parameters()]
    results = {}
    for name, m in (("model", model), ("reference", reference)):
        out = m(batch, forces=True, stress=True, create_graph=True)
        grads = torch.autograd.grad(efs_loss(out), params, allow_unused=True)
        results[name] = (out, grads, m.backbone(inputs_of_batch(batch)))
    (out, grads, features), (ref, ref_grads, ref_features) = results["model"], results["reference"]
    assert_relative(features.node, ref_features.node, "node features")
    assert_relative(features.vector, ref_features.vector, "vector features")
    for key in ("energy", "forces", "stress"):
        assert_relative(out[key], ref[key], key)
    assert len(grads) == len(ref_grads) == len(params) > 20
    names = [n for n, _ in model.named_parameters()]
    for name, g, g_ref in zip(names, grads, ref_grads):
        assert g is not None and g_ref is not None, name
        assert_relative(g, g_ref, f"d(loss)/d({name})")


def inputs_of_batch(batch: Batch) -> GraphInputs:
    vec, _, _ = edge_vectors(batch.pos, batch.cell.reshape(-1, 3, 3), batch.shifts, batch.edge_index, batch.batch)
    return GraphInputs(z=batch.z, edge_index=batch.edge_index, edge_vec=vec, batch=batch.batch,
                       num_graphs=batch.num_graphs)


def test_atom_pairs_group_the_periodic_images_of_each_pair():
    batch = batch_of(periodic_structures())
    edge_index = batch.edge_index
    pair_index, edge_pair = atom_pairs(edge_index, int(batch.num_nodes))
    assert edge_pair is not None and edge_pair.shape == (edge_index.shape[1],)
    torch.testing.assert_close(pair_index[:, edge_pair], edge_index, rtol=0, atol=0)   # each edge -> its pair
    keys = (pair_index[1] * batch.num_nodes + pair_index[0]).tolist()
    assert keys == sorted(set(keys))                                                   # distinct, by centre
    expected = {(int(a), int(b)) for a, b in edge_index.T.tolist()}
    assert {(int(a), int(b)) for a, b in pair_index.T.tolist()} == expected
    # the 1-atom cell: all its edges are images of the one self-pair
    last = int(batch.num_nodes) - 1
    assert sum(1 for a, b in pair_index.T.tolist() if a == b == last) == 1

    cluster = batch_of([cluster_in_a_box()]).edge_index
    same, none = atom_pairs(cluster, 6)
    assert none is None and same is cluster


def test_parameter_names_are_those_of_saved_backbones():
    keys = list(PaiNN(hidden=4, num_interactions=2, num_radial=3).state_dict())
    per_block = ["message.phi.0.weight", "message.phi.0.bias", "message.phi.2.weight", "message.phi.2.bias",
                 "message.filter.weight", "update.vector_mix.weight", "update.phi.0.weight", "update.phi.0.bias",
                 "update.phi.2.weight", "update.phi.2.bias"]
    assert keys == ["embedding.weight"] + [f"blocks.{k}.{name}" for k in range(2) for name in per_block]
