"""The offline EMT label generator: labels are EMT's, physics signs hold, output is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from matforge.cli.main import main
from matforge.datasets import open_dataset
from matforge.datasets.manifest import INDEX_NAME, Manifest
from matforge.datasets.synth import (
    DEFAULT_ELEMENTS,
    MD_FRAMES,
    SCHEDULE,
    emt_lattice_constant,
    synth_records,
    write_synth,
)

from conftest import SYNTH_RECORDS


def _kind(record_id: str) -> str:
    return record_id.split("-", 3)[3]


def _emt(record):
    atoms = record.to_ase()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


def test_stored_labels_equal_emt_recomputed_on_stored_structure(synth_dir):
    ds = open_dataset(synth_dir)
    assert len(ds) == SYNTH_RECORDS
    for record in ds:
        energy, forces, stress = _emt(record)
        assert record.energy == pytest.approx(energy, abs=1e-10), record.id
        np.testing.assert_allclose(record.forces, forces, rtol=0, atol=1e-10, err_msg=record.id)
        np.testing.assert_allclose(record.stress, stress, rtol=0, atol=1e-10, err_msg=record.id)
        assert record.stress.shape == (3, 3)
        np.testing.assert_allclose(record.stress, record.stress.T, atol=1e-12)


def test_every_kind_is_present(synth_dir):
    kinds = {_kind(r.id) for r in open_dataset(synth_dir)}
    assert kinds == set(SCHEDULE)


@pytest.mark.parametrize("symbol", DEFAULT_ELEMENTS)
def test_lattice_constant_is_emt_zero_stress_point(symbol):
    """Checked with ASE directly: zero stress at a0, compressed below, tensile above."""
    a0 = emt_lattice_constant(symbol)

    def mean_stress(a: float) -> float:
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.calc = EMT()
        return float(np.trace(atoms.get_stress(voigt=False))) / 3

    assert abs(mean_stress(a0)) < 1e-9
    assert mean_stress(0.99 * a0) < -1e-4
    assert mean_stress(1.01 * a0) > 1e-4


def test_compressed_cells_have_negative_stress_and_stretched_positive(synth_dir):
    seen = {"strained-tensile": 0, "strained-compressive": 0}
    for record in open_dataset(synth_dir):
        kind = _kind(record.id)
        if kind not in seen:
            continue
        seen[kind] += 1
        symbol = {29: "Cu", 47: "Ag", 79: "Au", 28: "Ni", 46: "Pd", 78: "Pt", 13: "Al"}[int(record.numbers[0])]
        volume_per_atom = record.volume / record.natoms
        relaxed_volume_per_atom = emt_lattice_constant(symbol) ** 3 / 4
        diagonal = np.diag(record.stress)
        if kind == "strained-tensile":
            assert volume_per_atom > relaxed_volume_per_atom
            assert np.all(diagonal > 0), (record.id, diagonal)
        else:
            assert volume_per_atom < relaxed_volume_per_atom
            assert np.all(diagonal < 0), (record.id, diagonal)
    assert seen["strained-tensile"] >= 2 and seen["strained-compressive"] >= 2


def test_equilibrium_flags_match_forces_and_stress(synth_dir):
    ds = open_dataset(synth_dir)
    flags = ds.equilibrium
    relaxed = 0
    for i, record in enumerate(ds):
        assert flags[i] == int(record.equilibrium)
        if _kind(record.id) == "relaxed":
            relaxed += 1
            assert record.equilibrium is True
            assert np.abs(record.forces).max() < 1e-10
            assert np.abs(record.stress).max() < 1e-9
        else:
            assert record.equilibrium is False
            assert np.abs(record.forces).max() > 1e-3 or np.abs(record.stress).max() > 1e-4, record.id
    assert relaxed == 3
    stats = Manifest.read(synth_dir).statistics["equilibrium"]
    assert stats == {"relaxed": 3, "off_equilibrium": SYNTH_RECORDS - 3, "unknown": 0}


def test_md_frames_share_a_trajectory_and_move(synth_dir):
    ds = open_dataset(synth_dir)
    runs: dict[str, list] = {}
    for i, record in enumerate(ds):
        if _kind(record.id) == "md":
            runs.setdefault(record.trajectory, []).append((i, record))
        else:
            assert record.trajectory == record.id and record.frame is None
    assert len(runs) == SYNTH_RECORDS // 12
    codes = ds.trajectory_codes
    for trajectory, frames in runs.items():
        assert [r.frame for _, r in frames] == list(range(MD_FRAMES))
        assert len({int(codes[i]) for i, _ in frames}) == 1
        first = frames[0][1]
        for _, r in frames[1:]:
            assert np.array_equal(r.numbers, first.numbers) and np.array_equal(r.cell, first.cell)
            assert not np.allclose(r.positions, first.positions)
    md_codes = {int(codes[frames[0][0]]) for frames in runs.values()}
    other_codes = [int(codes[i]) for i, r in enumerate(ds) if _kind(r.id) != "md"]
    assert md_codes.isdisjoint(other_codes) and len(set(other_codes)) == len(other_codes)


def test_same_seed_same_bytes_other_seed_other_records(tmp_path):
    write_synth(tmp_path / "a", 14, seed=5, shard_size=5)
    write_synth(tmp_path / "b", 14, seed=5, shard_size=5)
    write_synth(tmp_path / "c", 14, seed=6, shard_size=5)
    assert (tmp_path / "a" / INDEX_NAME).read_bytes() == (tmp_path / "b" / INDEX_NAME).read_bytes()
    a, b, c = (open_dataset(tmp_path / x) for x in "abc")
    assert [a.raw(i) for i in range(14)] == [b.raw(i) for i in range(14)]
    assert [r.id for r in a] == [f"emt-s5-{i:06d}-{_kind(r.id)}" for i, r in enumerate(a)]
    same = sum(ra.natoms == rc.natoms and np.array_equal(ra.positions, rc.positions) for ra, rc in zip(a, c))
    assert same <= 2  # at most a coincidence such as two one-atom relaxed cells


def test_shorter_run_is_a_prefix_of_a_longer_one():
    short = list(synth_records(11, seed=2))  # ends inside an MD run
    long = list(synth_records(20, seed=2))
    assert len(short) == 11 and len(long) == 20
    for s, l in zip(short, long):
        assert s.id == l.id and s.energy == l.energy and np.array_equal(s.positions, l.positions)


def test_counts_elements_and_size_limit(tmp_path):
    report = write_synth(tmp_path / "d", 23, seed=1, elements=["Cu", "Ni"], max_atoms=8)
    ds = open_dataset(tmp_path / "d")
    manifest = Manifest.read(tmp_path / "d")
    assert report.num_records == len(ds) == manifest.num_records == 23
    assert manifest.labels["energy"] == manifest.labels["forces"] == manifest.labels["stress"] == 23
    assert manifest.elements == [28, 29]
    assert int(ds.natoms.max()) <= 8 and manifest.num_atoms == int(ds.natoms.sum())
    assert manifest.num_skipped == 0


def test_single_element_replaces_alloys():
    records = list(synth_records(12, seed=0, elements=["Al"]))
    assert all(set(r.numbers.tolist()) == {13} for r in records)
    assert "alloy" not in {_kind(r.id) for r in records}


@pytest.mark.parametrize("kwargs, message", [
    ({"elements": ["Cu", "Fe"]}, "Fe not available"),
    ({"elements": []}, "no elements"),
    ({"max_atoms": 3}, "max_atoms=3"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"n": -2}, "must be >= 0"),
])
def test_bad_arguments_fail_before_writing(tmp_path, kwargs, message):
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_synth(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == []


def test_cli_writes_the_same_records_as_the_api(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--calculator", "emt", "--structures", "7", "--out", str(out),
                 "--seed", "3", "--elements", "Au,Pt", "--max-atoms", "16", "--no-progress"]) == 0
    assert "wrote 7" in capsys.readouterr().out
    api = list(synth_records(7, seed=3, elements=["Au", "Pt"], max_atoms=16))
    stored = list(open_dataset(out))
    assert [r.id for r in stored] == [r.id for r in api]
    assert all(np.array_equal(s.forces, a.forces) for s, a in zip(stored, api))
    with pytest.raises(SystemExit, match="Fe not available"):
        main(["data", "synth", "--structures", "2", "--out", str(tmp_path / "x"), "--elements", "Fe"])
