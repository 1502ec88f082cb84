"""Smooth CGCNN backbone: no coupling between the structures of a batch (no BatchNorm), the
element-embedding options, its radial-basis variants against finite differences, freeze groups.
Energy/forces/stress physics on real structures is in ``test_model_efs.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.record import Record
from matforge.models.cgcnn_smooth import SmoothCGCNN
from matforge.models.heads import EnergyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

CUTOFF = 4.5
SMALL = dict(hidden=16, num_interactions=2, cutoff=CUTOFF, num_radial=8, avg_neighbors=1.0)


def _record(numbers, positions, cell) -> Record:
    return Record(id="t", numbers=np.asarray(numbers, dtype=np.int64), positions=np.asarray(positions, float),
                  cell=np.asarray(cell, float), pbc=np.ones(3, dtype=bool))


def rattled_rocksalt(seed: int = 0) -> Record:
    a = 5.64
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.vstack([fcc, fcc + [0.5, 0, 0]])
    rng = np.random.default_rng(seed)
    return _record([11] * 4 + [17] * 4, frac * a + 0.1 * rng.standard_normal((8, 3)), a * np.eye(3))


def rattled_bcc_mo(seed: int = 1) -> Record:
    a = 3.16
    rng = np.random.default_rng(seed)
    return _record([42, 42], np.array([[0, 0, 0], [a / 2, a / 2, a / 2]]) + 0.1 * rng.standard_normal((2, 3)),
                   a * np.eye(3) + 0.05 * rng.standard_normal((3, 3)))


def batch_of(*records: Record) -> Batch:
    builder = GraphBuilder(cutoff=CUTOFF, dtype="float64")
    return Batch.from_data_list([builder(r) for r in records])


def model_of(seed: int = 0, **overrides) -> AtomisticModel:
    torch.manual_seed(seed)
    bb = SmoothCGCNN(**{**SMALL, **overrides})
    return AtomisticModel(bb, {"energy": EnergyHead(16, hidden=16, scale=3.0)}).double()


def test_no_batchnorm_and_structures_in_a_batch_do_not_interact():
    """In training mode too (where BatchNorm would use batch statistics), a structure's energy,
    forces and stress do not depend on what else is in the batch."""
    model = model_of()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model.train()
    a, b = rattled_rocksalt(), rattled_bcc_mo()
    alone = model(batch_of(a), forces=True, stress=True)
    together = model(batch_of(b, a), forces=True, stress=True)
    torch.testing.assert_close(together["energy"][1], alone["energy"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together["forces"][2:], alone["forces"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together["stress"][1], alone["stress"][0], rtol=1e-12, atol=1e-12)


def _fd_check(model: AtomisticModel, record: Record) -> None:
    out = model(batch_of(record), forces=True, stress=True)
    forces, stress = out["forces"].detach().numpy(), out["stress"][0].detach().numpy()
    h = 1e-4

    def energy(r: Record) -> float:
        with torch.no_grad():
            return float(model(batch_of(r))["energy"][0])

    fd_f = np.zeros(3)
    for k in range(3):
        e = []
        for sign in (1, -1):
            pos = record.positions.copy()
            pos[1, k] += sign * h
            e.append(energy(_record(record.numbers, pos, record.cell)))
        fd_f[k] = -(e[0] - e[1]) / (2 * h)
    volume = abs(np.linalg.det(record.cell))
    fd_s = np.zeros(3)
    for k, (a, b) in enumerate([(0, 0), (1, 2), (0, 2)]):
        e = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[a, b] += sign * h / 2
            strain[b, a] += sign * h / 2
            f = np.eye(3) + strain
            e.append(energy(_record(record.numbers, record.positions @ f, record.cell @ f)))
        fd_s[k] = (e[0] - e[1]) / (2 * h) / volume
    assert np.abs(forces[1]).max() > 1e-2 and np.abs(fd_s).max() > 1e-3
    np.testing.assert_allclose(forces[1], fd_f, rtol=0, atol=1e-4 * np.abs(fd_f).max())
    s = np.array([stress[0, 0], stress[1, 2], stress[0, 2]])
    np.testing.assert_allclose(s, fd_s, rtol=0, atol=1e-4 * np.abs(fd_s).max())


@pytest.mark.parametrize("radial, envelope, norm", [
    ("bessel", "polynomial", "layer"),
    ("gaussian", "cosine", "none"),
])
def test_variants_match_finite_differences(radial, envelope, norm):
    _fd_check(model_of(radial=radial, envelope=envelope, norm=norm), rattled_bcc_mo())


def test_cgcnn92_embedding_is_a_linear_map_of_the_cgcnn_features():
    from matforge.models.atom_features import cgcnn_atom_features

    model = model_of(embedding="cgcnn92")
    embedding = model.backbone.embedding
    z = torch.tensor([1, 8, 42, 100])
    table = cgcnn_atom_features().double()
    expected = table[z] @ embedding.linear.weight.T + embedding.linear.bias
    torch.testing.assert_close(embedding(z), expected)
    assert not any(p is embedding.features for p in model.parameters())   # fixed features, not trained
    _fd_check(model, rattled_bcc_mo())


def test_learned_embedding_table_has_a_row_per_element():
    bb = SmoothCGCNN(**SMALL)
    assert isinstance(bb.embedding.table, nn.Embedding)
    assert bb.embedding.table.weight.shape == (101, 16)


def test_freeze_groups_partition_the_parameters():
    bb = SmoothCGCNN(**{**SMALL, "num_interactions": 3})
    groups = bb.freeze_groups()
    assert [name for name, _ in groups] == ["embedding", "block.0", "block.1", "block.2"]
    ids = [id(p) for _, modules in groups for m in modules for p in m.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in bb.parameters()}


def test_rebuilt_from_hparams_gives_the_same_output():
    torch.manual_seed(0)
    bb = create("cgcnn_smooth", **SMALL, radial="bessel").double()
    assert bb.arch == "cgcnn_smooth" and bb.smooth and bb.cutoff == CUTOFF and bb.max_neighbors is None
    clone = create("cgcnn_smooth", **bb.hparams).double()
    clone.load_state_dict(bb.state_dict(), strict=True)
    heads = {"energy": EnergyHead(16, hidden=16).double()}
    model, twin = AtomisticModel(bb, heads).double(), AtomisticModel(clone, heads).double()
    batch = batch_of(rattled_rocksalt())
    with torch.no_grad():
        torch.testing.assert_close(twin(batch)["energy"], model(batch)["energy"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(embedding="onehot"), "embedding must be one of"),
    (dict(norm="batch"), "norm must be one of"),
    (dict(radial="chebyshev"), "unknown radial basis"),
    (dict(num_interactions=0), "num_interactions"),
    (dict(avg_neighbors=0.0), "avg_neighbors"),
])
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmoothCGCNN(**{**SMALL, **kwargs})
