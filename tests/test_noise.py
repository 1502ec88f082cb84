"""PositionNoise: deterministic in (seed, epoch, index), relaxed records only by default, a new
record every time (the input untouched), centred Gaussian displacements of the right spread,
stale labels dropped, picklable for loader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.noise import PositionNoise
from matforge.datasets.record import Record


def fcc_record(equilibrium: bool | None = True, reps: int = 2, rid: str = "cu") -> Record:
    a = 3.6
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * a
    shifts = np.array([[i, j, k] for i in range(reps) for j in range(reps) for k in range(reps)]) * a
    positions = (shifts[:, None, :] + base[None]).reshape(-1, 3)
    n = positions.shape[0]
    return Record(id=rid, numbers=np.full(n, 29, dtype=np.int64), positions=positions, cell=reps * a * np.eye(3),
                  pbc=np.ones(3, dtype=bool), energy=-1.5, forces=np.zeros((n, 3)), stress=np.zeros((3, 3)),
                  properties={"band_gap": 0.0}, equilibrium=equilibrium)


def test_same_seed_epoch_index_gives_the_same_noise_and_any_change_differs():
    noise = PositionNoise(0.1, seed=3)
    record = fcc_record()
    _, first = noise(record, 5, 2)
    _, again = noise(record, 5, 2)
    np.testing.assert_array_equal(first["noise"], again["noise"])
    for other in (noise(record, 6, 2)[1], noise(record, 5, 3)[1], PositionNoise(0.1, seed=4)(record, 5, 2)[1]):
        assert np.abs(other["noise"] - first["noise"]).max() > 1e-3
    # the documented draw: default_rng([seed, epoch, index]) standard normals × σ, centred
    xi = np.random.default_rng([3, 2, 5]).standard_normal((record.natoms, 3)) * 0.1
    np.testing.assert_allclose(first["noise"], xi - xi.mean(axis=0), rtol=0, atol=1e-15)


def test_returns_a_new_noised_record_and_leaves_the_input_alone():
    record = fcc_record()
    before = record.positions.copy()
    noised, extras = PositionNoise(0.1, seed=0)(record, 0, 0)
    assert noised is not record and noised.positions is not record.positions
    np.testing.assert_array_equal(record.positions, before)          # input untouched
    assert record.energy == -1.5 and record.forces is not None
    np.testing.assert_allclose(noised.positions, before + extras["noise"], rtol=0, atol=1e-15)
    assert extras["noise"].dtype == np.float64 and extras["noise"].shape == (32, 3)
    assert extras["noise_mask"].dtype == bool and extras["noise_mask"].all()
    # labels of the un-noised geometry are dropped; named properties and identity are kept
    assert noised.energy is None and noised.forces is None and noised.stress is None
    assert noised.properties == {"band_gap": 0.0} and noised.properties is not record.properties
    assert noised.id == record.id and noised.equilibrium is True
    kept, _ = PositionNoise(0.1, seed=0, keep_labels=True)(record, 0, 0)
    assert kept.energy == -1.5 and kept.forces is record.forces


@pytest.mark.parametrize("flag", [False, None])
def test_only_relaxed_records_are_noised_unless_asked(flag):
    record = fcc_record(equilibrium=flag)
    out, extras = PositionNoise(0.1, seed=0)(record, 1, 0)
    assert out is not record
    np.testing.assert_array_equal(out.positions, record.positions)
    assert not extras["noise_mask"].any() and not extras["noise"].any() and extras["noise"].shape == (32, 3)
    assert out.energy == -1.5                       # nothing changed, so the labels stay valid
    out, extras = PositionNoise(0.1, seed=0, equilibrium_only=False)(record, 1, 0)
    assert extras["noise_mask"].all() and np.abs(out.positions - record.positions).max() > 0.05


def test_noise_is_centred_with_the_expected_spread():
    record = fcc_record(reps=3)          # 108 atoms
    noise = PositionNoise(0.2, seed=1)
    draws = np.stack([noise(record, i, 0)[1]["noise"] for i in range(40)])   # (40, 108, 3)
    np.testing.assert_allclose(draws.sum(axis=1), 0.0, atol=1e-12)     # no rigid translation
    n = record.natoms
    expected_std = 0.2 * np.sqrt(1 - 1 / n)
    assert draws.std() == pytest.approx(expected_std, rel=0.02)         # 12,960 components
    raw = PositionNoise(0.2, seed=1, center=False)(record, 0, 0)[1]["noise"]
    assert abs(raw.sum(axis=0)).max() > 1e-3
    one_atom = Record(id="x", numbers=np.array([29]), positions=np.zeros((1, 3)), cell=2.5 * np.eye(3),
                      pbc=np.ones(3, dtype=bool), equilibrium=True)
    assert not noise(one_atom, 0, 0)[1]["noise"].any()                  # a 1-atom cell can only translate


def test_graph_of_a_noised_record_uses_the_noised_geometry():
    record = fcc_record()
    noised, extras = PositionNoise(0.15, seed=2)(record, 0, 0)
    builder = GraphBuilder(cutoff=3.0, dtype="float64")
    clean, moved = builder(record), builder(noised)
    np.testing.assert_allclose(moved.pos.numpy(), record.positions + extras["noise"])
    # the perfect lattice has exactly 12 neighbours at a/√2 = 2.55 Å; noise moves some across 3 Å
    assert clean.edge_index.shape[1] == 32 * 12
    j, i = moved.edge_index
    vec = moved.pos[j] - moved.pos[i] + moved.shifts.double() @ moved.cell[0]
    assert float(vec.norm(dim=1).max()) <= 3.0
    assert moved.edge_index.shape[1] != clean.edge_index.shape[1]


def test_picklable_and_comparable():
    noise = PositionNoise(0.05, seed=7, equilibrium_only=False)
    twin = pickle.loads(pickle.dumps(noise))
    assert twin == noise and hash(twin) == hash(noise) and twin != PositionNoise(0.05, seed=8)
    record = fcc_record()
    np.testing.assert_array_equal(twin(record, 3, 1)[1]["noise"], noise(record, 3, 1)[1]["noise"])
    assert "std=0.05" in repr(noise)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positive number of Å"):
        PositionNoise(0.0, seed=0)
    with pytest.raises(ValueError, match="positive number of Å"):
        PositionNoise(float("nan"), seed=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        PositionNoise(0.1, seed=-1)
    with pytest.raises(ValueError, match="non-negative index and epoch, got index=-1"):
        PositionNoise(0.1, seed=0)(fcc_record(), -1, 0)
