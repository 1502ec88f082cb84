"""PaiNN backbone: exact equivariance of its vector features, harmonic energy around symmetric
configurations (the soft vector norm), freeze groups, and rebuilding from its hyper-parameters.
Energy/forces/stress physics is in ``test_model_efs.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.record import Record
from matforge.models.base import GraphInputs, edge_vectors
from matforge.models.heads import EnergyHead
from matforge.models.model import AtomisticModel
from matforge.models.painn import PaiNN
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
