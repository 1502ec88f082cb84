"""Graph building: neighbour lists against ASE, edge geometry, nearest-k, isolated atoms, and the
fast collate against ``Batch.from_data_list``.

Structures: the perov5 and carbon24 fixture rows (real DFT cells; the carbon24 ones are triclinic
with a 2.5 Å lattice vector, so an 8 Å sphere reaches many images), a 1-atom fcc cell, methane
(non-periodic) and a 2D-periodic slab (pbc = T, T, F), plus EMT-labelled records from
``matforge data synth`` for the label fields.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from torch_geometric.data import Batch, Data

from matforge.datasets.errors import RecordError
from matforge.datasets.collate import collate
from matforge.datasets.graphs import GraphBuilder, GraphConfig, data_fields, to_data
from matforge.datasets.neighbors import neighbor_list
from matforge.datasets.readers import make_reader
from matforge.datasets.record import Record

FIXTURES = Path(__file__).parent / "fixtures"


def _csv_records(name: str) -> list[Record]:
    reader = make_reader(FIXTURES / name / "val.csv", "csv-cif")
    return [reader.to_record(item) for item in reader.items()]


def _from_atoms(rid: str, atoms: Atoms) -> Record:
    return Record(id=rid, numbers=atoms.numbers.astype(np.int64), positions=atoms.positions.astype(float),
                  cell=np.asarray(atoms.cell.array, dtype=float), pbc=np.asarray(atoms.pbc, dtype=bool))


PEROV = _csv_records("perov5")
CARBON = _csv_records("carbon24")
CU1 = _from_atoms("cu-fcc-1atom", bulk("Cu", "fcc", a=3.61))
METHANE = _from_atoms("ch4", molecule("CH4"))
SLAB = _from_atoms("pt111-slab", fcc111("Pt", size=(2, 2, 3), vacuum=None, periodic=False))
SLAB.pbc = np.array([True, True, False])

CASES = [(r, 8.0) for r in PEROV] + [(r, c) for r in CARBON for c in (8.0, 3.0)] + [
    (CU1, 6.0), (CU1, 2.6), (METHANE, 1.5), (METHANE, 5.0), (SLAB, 6.0)]


def _ase_reference(record: Record, cutoff: float) -> dict[tuple[int, int, int, int, int], float]:
    atoms = record.to_ase()
    i, j, s, d = ase_neighbor_list("ijSd", atoms, cutoff)
    return {(int(a), int(b), *map(int, sh)): float(x) for a, b, sh, x in zip(i, j, s, d)}


def _edges(data: Data) -> dict[tuple[int, int, int, int, int], int]:
    j, i = data.edge_index.numpy()
    return {(int(c), int(n), *map(int, sh)): e for e, (c, n, sh) in enumerate(zip(i, j, data.shifts.numpy()))}


@pytest.mark.parametrize("record,cutoff", CASES, ids=[f"{r.id}-{c}" for r, c in CASES])
def test_neighbor_list_equals_ase(record, cutoff):
    reference = _ase_reference(record, cutoff)
    assert reference, "a test case without edges tests nothing"
    i, j, s, d = neighbor_list(record.positions, record.cell, record.pbc, cutoff)
    got = {(int(a), int(b), *map(int, sh)): float(x) for a, b, sh, x in zip(i, j, s, d)}
    assert len(got) == len(i)  # no duplicated edge
    assert got.keys() == reference.keys()
    for key, dist in reference.items():
        assert got[key] == pytest.approx(dist, abs=1e-10)
    assert np.all(np.diff(i) >= 0)  # sorted by centre


@pytest.mark.parametrize("record,cutoff", CASES, ids=[f"{r.id}-{c}" for r, c in CASES])
def test_edge_vectors_reproduce_distances(record, cutoff):
    """r_ij = pos[j] - pos[i] + shifts @ cell (torch, float64) has the reference lengths."""
    data = GraphBuilder(cutoff=cutoff, dtype="float64")(record)
    reference = _ase_reference(record, cutoff)
    j, i = data.edge_index
    vec = data.pos[j] - data.pos[i] + data.shifts.to(torch.float64) @ data.cell[0]
    length = torch.linalg.vector_norm(vec, dim=1).numpy()
    edges = _edges(data)
    assert edges.keys() == reference.keys()
    np.testing.assert_allclose(length[[edges[k] for k in reference]], list(reference.values()), rtol=0, atol=1e-10)
    assert length.max() < cutoff


@pytest.mark.parametrize("record", [PEROV[0], CARBON[0], CU1, SLAB], ids=lambda r: r.id)
@pytest.mark.parametrize("k", [1, 12])
def test_max_neighbors_keeps_the_k_nearest(record, k):
    cutoff = 8.0
    reference = _ase_reference(record, cutoff)
    data = GraphBuilder(cutoff=cutoff, max_neighbors=k, dtype="float64")(record)
    j, i = data.edge_index
    length = torch.linalg.vector_norm(data.pos[j] - data.pos[i] + data.shifts.double() @ data.cell[0], dim=1).numpy()
    kept = _edges(data)
    assert kept.keys() <= reference.keys()
    for centre in range(record.natoms):
        all_d = np.sort([d for key, d in reference.items() if key[0] == centre])
        mine = np.sort(length[i.numpy() == centre])
        assert len(mine) == min(k, len(all_d))
        np.testing.assert_allclose(mine, all_d[: len(mine)], atol=1e-10)
    # deterministic (ties broken by neighbour index, then shift), and sorted by centre
    again = GraphBuilder(cutoff=cutoff, max_neighbors=k, dtype="float64")(record)
    assert torch.equal(again.edge_index, data.edge_index) and torch.equal(again.shifts, data.shifts)
    assert torch.all(i[1:] >= i[:-1])


def test_ties_broken_by_neighbour_then_shift():
    """In the cubic 4-atom fcc cell every atom has 12 nearest neighbours at exactly a/√2 (vesin
    lists them in no particular order of j): with k=4 the kept ones are the first 4 in (j, shift)
    order."""
    cell = _from_atoms("cu-fcc-cubic", bulk("Cu", "fcc", a=3.61, cubic=True))
    i, j, s, d = neighbor_list(cell.positions, cell.cell, cell.pbc, 3.0, max_neighbors=4)
    fi, fj, fs, fd = neighbor_list(cell.positions, cell.cell, cell.pbc, 3.0)
    assert len(fd) == 48 and np.unique(fd).size == 1  # exact ties
    for centre in range(4):
        full = sorted((int(b), *map(int, sh)) for b, sh in zip(fj[fi == centre], fs[fi == centre]))
        kept = [(int(b), *map(int, sh)) for b, sh in zip(j[i == centre], s[i == centre])]
        assert kept == full[:4]


def test_graph_fields_and_labels(synth_dir):
    from matforge.datasets import open_dataset

    record = open_dataset(synth_dir)[0]
    assert record.forces is not None and record.stress is not None and record.energy is not None
    record.properties = {"band_gap": 1.25}
    data = GraphBuilder(cutoff=4.0, properties=("band_gap", "absent"), dtype="float64")(record, index=7)
    n = record.natoms
    assert torch.equal(data.z, torch.from_numpy(record.numbers))
    assert data.pos.dtype == torch.float64 and torch.equal(data.pos, torch.from_numpy(record.positions))
    assert data.cell.shape == (1, 3, 3) and torch.equal(data.cell[0], torch.from_numpy(record.cell))
    assert data.pbc.shape == (1, 3) and data.pbc.all()
    assert data.energy.item() == record.energy and data.has_energy.item()
    assert torch.equal(data.forces, torch.from_numpy(record.forces)) and data.has_forces.item()
    assert torch.equal(data.stress[0], torch.from_numpy(record.stress)) and data.has_stress.item()
    assert data.y.tolist() == [[1.25, 0.0]] and data.y_mask.tolist() == [[True, False]]
    assert data.natoms.tolist() == [n] and data.num_nodes == n and data.idx.tolist() == [7]
    assert data.equilibrium.tolist() == [-1 if record.equilibrium is None else int(record.equilibrium)]
    assert data.isolated.tolist() == [False]
    # float32 by default; absent labels are zeros with has_* False
    bare = GraphBuilder(cutoff=8.0)(PEROV[0])
    assert bare.pos.dtype == torch.float32 and bare.energy.dtype == torch.float32
    assert not bare.has_energy.item() and not bare.has_forces.item() and not bare.has_stress.item()
    assert bare.forces.abs().sum() == 0 and bare.stress.abs().sum() == 0
    assert bare.equilibrium.item() == -1 or bare.equilibrium.item() in (0, 1)


def _lonely_water() -> Record:
    """H2O with an argon atom 10 Å away: atom 3 has no neighbour within 2 Å."""
    atoms = molecule("H2O")
    atoms += Atoms("Ar", positions=[[10.0, 0.0, 0.0]])
    return _from_atoms("water+ar", atoms)


def test_isolated_atom_is_an_error_when_asked():
    with pytest.raises(RecordError, match=r"record 'water\+ar': atom 3 has no neighbour within 2.0 Å"):
        GraphBuilder(cutoff=2.0, on_isolated="error")(_lonely_water())
    GraphBuilder(cutoff=2.0, on_isolated="error")(METHANE)  # every atom bonded: no error


def test_isolated_atom_is_flagged_and_collates():
    builder = GraphBuilder(cutoff=2.0, dtype="float64")
    lonely = builder(_lonely_water(), 0)
    assert lonely.isolated.tolist() == [True]
    assert 3 not in lonely.edge_index[1].tolist() and 3 not in lonely.edge_index[0].tolist()
    assert builder(METHANE, 1).isolated.tolist() == [False]
    single = GraphBuilder(cutoff=2.0)(_from_atoms("he", Atoms("He", positions=[[0, 0, 0]])))
    assert single.isolated.tolist() == [True] and single.edge_index.shape == (2, 0)

    records = [METHANE, _lonely_water(), METHANE]
    batch = builder.collate([builder.parts(r, k) for k, r in enumerate(records)])
    assert batch.isolated.tolist() == [False, True, False]
    assert batch.num_graphs == 3 and batch.num_nodes == 5 + 4 + 5
    # the lonely atom (global index 5 + 3) has no edge; a sum over incoming edges is zero, not NaN
    incoming = torch.zeros(batch.num_nodes).index_add_(0, batch.edge_index[1], torch.ones(batch.edge_index.shape[1]))
    assert incoming[8] == 0 and torch.isfinite(incoming).all() and (incoming[:8] > 0).all()
    _assert_same_batch(batch, Batch.from_data_list([builder(r, k) for k, r in enumerate(records)]))


def _assert_same_batch(got: Batch, ref: Batch) -> None:
    assert type(got) is type(ref)
    assert set(got.keys()) == set(ref.keys())
    for key in ref.keys():
        a, b = got[key], ref[key]
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
        else:
            assert a == b, key
    assert got.num_graphs == ref.num_graphs and got.num_nodes == ref.num_nodes
    assert got.stores[0]._num_nodes == ref.stores[0]._num_nodes
    assert got._slice_dict.keys() == ref._slice_dict.keys() and got._inc_dict.keys() == ref._inc_dict.keys()
    for key in ref._slice_dict:
        assert torch.equal(got._slice_dict[key], ref._slice_dict[key]), key
        assert torch.equal(got._inc_dict[key], ref._inc_dict[key]), key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_collate_equals_batch_from_data_list(synth_dir, dtype):
    """Mixed sources: labelled EMT frames, perov5 cells with properties, triclinic carbon, a molecule
    without a cell, a 1-atom cell: every field, the bookkeeping and get_example agree."""
    from matforge.datasets import open_dataset

    synth = open_dataset(synth_dir)
    records = [synth[0], PEROV[0], CARBON[1], METHANE, synth[5], CU1, PEROV[2], SLAB]
    builder = GraphBuilder(cutoff=4.0, properties=("heat_ref", "dir_gap"), dtype=dtype)
    parts = [builder.parts(r, 10 + k) for k, r in enumerate(records)]
    fast = builder.collate(parts)
    ref = Batch.from_data_list([builder(r, 10 + k) for k, r in enumerate(records)])
    _assert_same_batch(fast, ref)
    assert fast.y_mask[:, 0].tolist() == [False, True, False, False, False, False, True, False]
    assert fast.has_forces.tolist() == [True, False, False, False, True, False, False, False]
    for k, p in enumerate(parts):
        example, single = fast.get_example(k), to_data(p, builder.config.torch_dtype)
        assert set(example.keys()) == set(single.keys())
        for key in single.keys():
            assert torch.equal(example[key], single[key]) if isinstance(single[key], torch.Tensor) else example[key] == single[key]


def test_to_data_equals_the_public_constructor():
    parts = GraphBuilder(cutoff=8.0, properties=("heat_ref",)).parts(PEROV[1], 3)
    fast = to_data(parts)
    slow = Data(**data_fields(parts), num_nodes=5)
    assert set(fast.keys()) == set(slow.keys()) and fast.num_nodes == slow.num_nodes == 5
    for key in slow.keys():
        assert torch.equal(fast[key], slow[key]) if isinstance(slow[key], torch.Tensor) else fast[key] == slow[key]


def test_collate_rejects_an_empty_list():
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_builder_pickles_and_rebuilds_the_same_graph():
    builder = GraphBuilder(cutoff=8.0, max_neighbors=12)
    clone = pickle.loads(pickle.dumps(builder))
    a, b = builder(CARBON[0]), clone(CARBON[0])
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.shifts, b.shifts)


@pytest.mark.parametrize("kwargs,message", [
    (dict(cutoff=0.0), "cutoff must be positive"),
    (dict(max_neighbors=0), "max_neighbors"),
    (dict(dtype="float16"), "dtype"),
    (dict(on_isolated="ignore"), "on_isolated"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GraphConfig(**kwargs)
    with pytest.raises(TypeError):
        GraphBuilder(GraphConfig(), cutoff=3.0)


def test_batch_tensors_live_in_one_buffer_per_dtype():
    """A worker hands a batch over with one file descriptor per storage: fields and PyG's
    bookkeeping must share three buffers (long, float, bool), not ~55."""
    builder = GraphBuilder(cutoff=8.0, properties=("heat_ref",))
    batch = builder.collate([builder.parts(r, k) for k, r in enumerate(PEROV + CARBON)])
    tensors = [batch[key] for key in batch.keys() if isinstance(batch[key], torch.Tensor)]
    tensors += list(batch._slice_dict.values()) + list(batch._inc_dict.values())
    storages = {(t.dtype, t.untyped_storage().data_ptr()) for t in tensors}
    assert len(storages) == 3
    # views never overlap: writing one field leaves the others intact
    before = {key: batch[key].clone() for key in ("z", "natoms", "idx", "ptr", "batch")}
    batch.edge_index.zero_()
    for key, value in before.items():
        assert torch.equal(batch[key], value), key


def test_extra_per_atom_fields_are_checked_and_batched():
    builder = GraphBuilder(cutoff=8.0)
    good = [builder.parts(r, k, {"noise": np.full((5, 3), 0.5 * k), "noise_mask": np.ones(5, bool)})
            for k, r in enumerate(PEROV)]
    batch = builder.collate(good)
    assert batch.noise.dtype == torch.float32 and batch.noise.shape == (15, 3)
    assert batch.noise[5:10].eq(0.5).all() and batch.noise_mask.all()
    _assert_same_batch(batch, Batch.from_data_list([to_data(p) for p in good]))
    with pytest.raises(ValueError, match=r"record '18517': extra field 'noise' has shape \(4, 3\)"):
        builder.parts(PEROV[0], 0, {"noise": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="would replace a graph field"):
        builder.parts(PEROV[0], 0, {"pos": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="different extra fields"):
        builder.collate([good[0], builder.parts(PEROV[1], 1)])
