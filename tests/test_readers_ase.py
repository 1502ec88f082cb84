"""ASE reader: extxyz, ASE databases, .traj and VASP outputs.

The extxyz/db/traj inputs are written with ASE itself, in each test's tmp dir, from real DFT frames:
the mlearn rows of tests/fixtures/mptrj (energies eV, forces eV/Å, stresses converted here from
VASP kBar to ASE's eV/Å³ by hand). The VASP inputs are the real OUTCAR and vasprun.xml that ASE
ships with its test data (``ase/test/testdata/vasp``, LGPL-2.1-or-later), read in place; the
relaxation OUTCAR is assembled from that OUTCAR's ionic step.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import ase
import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.ase_file_kinds import file_kind
from matforge.datasets.readers.ase_formats import AseReader
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
MPTRJ = FIXTURES / "mptrj" / "mptrj_fixture.json"
ASE_VASP = Path(ase.__file__).parent / "test" / "testdata" / "vasp"
KBAR_TO_EV_PER_A3 = 0.1 / 160.21766208  # 1 kBar = 0.1 GPa; 1 eV/Å³ = 160.21766208 GPa

needs_ase_vasp_data = pytest.mark.skipif(not (ASE_VASP / "OUTCAR_example_1").is_file(),
                                         reason="this ASE installation ships no VASP test data")


def _dft_frames() -> list[tuple[Atoms, dict]]:
    """The seven real DFT frames as ASE Atoms with a SinglePointCalculator, and what to expect."""
    frames = []
    for mp_id, material in json.loads(MPTRJ.read_text()).items():
        for frame_id, f in material.items():
            sites = f["structure"]["sites"]
            atoms = Atoms([s["species"][0]["element"] for s in sites], positions=[s["xyz"] for s in sites],
                          cell=f["structure"]["lattice"]["matrix"], pbc=True)
            stress = -np.array(f["stress"]) * KBAR_TO_EV_PER_A3  # VASP kBar -> ASE sign, eV/Å³
            forces = np.array(f["force"])
            atoms.calc = SinglePointCalculator(atoms, energy=f["corrected_total_energy"], forces=forces,
                                               stress=full_3x3_to_voigt_6_stress(stress))
            atoms.info["material"] = mp_id
            expected = {"energy": f["corrected_total_energy"], "forces": forces, "stress": stress,
                        "positions": atoms.positions.copy(), "numbers": atoms.numbers.copy(), "material": mp_id}
            frames.append((atoms, expected))
    return frames


def _records(path: Path, **options: str) -> list:
    reader = make_reader(path, "ase", options)
    return [reader.to_record(item) for item in reader.items()]


def _skipped(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]


def _assert_labels(rec, want: dict) -> None:
    assert rec.energy == want["energy"]
    np.testing.assert_allclose(rec.forces, want["forces"], atol=1e-8, rtol=0)  # extxyz arrays: 8 decimals
    np.testing.assert_allclose(rec.stress, want["stress"], rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(rec.positions, want["positions"], atol=1e-8, rtol=0)
    np.testing.assert_array_equal(rec.numbers, want["numbers"])


# -- extxyz ----------------------------------------------------------------------------------

def test_extxyz_round_trip_through_convert_and_open_dataset(tmp_path: Path) -> None:
    frames = _dft_frames()
    path = tmp_path / "dft.extxyz"
    ase.io.write(path, [a for a, _ in frames], format="extxyz")
    assert detect_format(path) == "ase"
    report = convert([path], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (7, 0)
    back = list(open_dataset(tmp_path / "out"))
    assert [r.id for r in back] == [f"dft.extxyz:{k}" for k in range(7)]
    for rec, (_, want) in zip(back, frames):
        _assert_labels(rec, want)
        assert rec.trajectory == rec.id and rec.frame is None and rec.equilibrium is None
    ge = back[5]
    assert ge.energy == -51.77864709
    np.testing.assert_allclose(ge.forces[0], [0.015709, -0.13385581, -0.16247796], atol=1e-12)
    # VASP's -4.80183087 kBar (tensile) is +0.00299707 eV/Å³ in ASE's sign; shear xy 0.05666478 kBar
    assert ge.stress[0, 0] == pytest.approx(0.00299707, abs=1e-8)
    assert ge.stress[0, 1] == ge.stress[1, 0] == pytest.approx(-0.05666478 * KBAR_TO_EV_PER_A3, rel=1e-12)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["labels"]["energy"] == manifest["labels"]["forces"] == manifest["labels"]["stress"] == 7


def test_extxyz_custom_keys_properties_and_trajectory_key(tmp_path: Path) -> None:
    frames = _dft_frames()
    written = []
    for k, (atoms, want) in enumerate(frames):
        plain = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
        plain.info.update(REF_energy=want["energy"], REF_stress=want["stress"].reshape(9), gap=0.25 * k,
                          material=want["material"])
        plain.arrays["REF_forces"] = want["forces"]
        written.append(plain)
    del written[2].info["REF_energy"]
    path = tmp_path / "ref.xyz"
    ase.io.write(path, written, format="extxyz")
    options = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress",
               "properties": "gap", "trajectory": "material"}
    reader = make_reader(path, "ase", options)
    recs, errors = [], {}
    for item in reader.items():
        try:
            recs.append(reader.to_record(item))
        except Exception as exc:
            errors[item.locator] = str(exc)
    assert list(errors) == ["frame 2"] and "no energy under 'REF_energy'" in errors["frame 2"]
    wants = [w for k, (_, w) in enumerate(frames) if k != 2]
    for rec, want in zip(recs, wants):
        _assert_labels(rec, want)
    assert [r.properties for r in recs] == [{"gap": 0.25 * k} for k in (0, 1, 3, 4, 5, 6)]
    assert [(r.trajectory, r.frame) for r in recs] == [("mp-135", 0), ("mp-135", 1), ("mp-135", 3), ("mp-129", 0),
                                                      ("mp-32", 0), ("mp-32", 1)]
    assert any("REF_stress" in c for c in reader.conversions)
    # without the options the same file has no labels: the REF_* keys are not ASE's names
    bare = _records(path)
    assert all(r.energy is None and r.forces is None and r.stress is None and r.properties == {} for r in bare)


def test_index_option_selects_frames_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "dft.extxyz"
    ase.io.write(path, [a for a, _ in _dft_frames()], format="extxyz")

    def ids(index: str) -> list[str]:
        return [r.id for r in _records(path, index=index)]

    assert ids(":") == [f"dft.extxyz:{k}" for k in range(7)]
    assert ids("-2:") == ["dft.extxyz:5", "dft.extxyz:6"]
    assert ids("-1") == ["dft.extxyz:6"]
    assert ids("1") == ["dft.extxyz:1"]
    assert ids("::3") == ["dft.extxyz:0", "dft.extxyz:3", "dft.extxyz:6"]
    assert ids("2:4") == ["dft.extxyz:2", "dft.extxyz:3"]
    assert ids("5:100") == ["dft.extxyz:5", "dft.extxyz:6"]
    with pytest.raises(SourceError, match="selects none"):
        ids("9")
    with pytest.raises(SourceError, match="out of range"):
        ids("-9")
    with pytest.raises(ValueError, match="negative or zero steps"):
        make_reader(path, "ase", {"index": "::-1"})
    with pytest.raises(ValueError, match="not an ASE index"):
        make_reader(path, "ase", {"index": "first"})


def test_bad_frames_are_skipped_with_file_record_and_reason(tmp_path: Path) -> None:
    frames = [a for a, _ in _dft_frames()[:5]]
    for atoms in frames:
        atoms.info["REF_stress"] = atoms.get_stress(voigt=False).reshape(9)
    frames[1].calc = SinglePointCalculator(frames[1], energy=float("nan"), forces=frames[1].get_forces())
    frames[2].numbers[0] = 101  # Md
    frames[3].info["REF_stress"] = np.array([1.0, 2.0, 3.0, 4.0])
    del frames[4].info["REF_stress"]
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames, format="extxyz")
    report = convert([path], tmp_path / "out", options={"stress_key": "REF_stress"})
    assert report.num_records == 1
    assert [(r["file"], r["record"], r["reason"]) for r in _skipped(tmp_path / "out")] == [
        (str(path), "frame 1", "energy contains NaN or inf"),
        (str(path), "frame 2", "atomic number 101 outside 1..100"),
        (str(path), "frame 3", "stress has 4 values, expected 6 (Voigt) or 9 (3x3)"),
        (str(path), "frame 4", "no stress under 'REF_stress' (calculator results: ['energy', 'forces', 'stress'], "
                               "info: ['material'])"),
    ]
    [kept] = list(open_dataset(tmp_path / "out"))
    np.testing.assert_allclose(kept.stress, frames[0].get_stress(voigt=False), rtol=1e-12)


def test_the_same_file_twice_gives_duplicate_ids(tmp_path: Path) -> None:
    frames = [a for a, _ in _dft_frames()[:2]]
    first, second = tmp_path / "a" / "dft.extxyz", tmp_path / "b" / "dft.extxyz"
    for path in (first, second):
        path.parent.mkdir()
        ase.io.write(path, frames, format="extxyz")
    report = convert([first, second], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (2, 2)
    assert [(r["file"], r["record"], r["reason"]) for r in _skipped(tmp_path / "out")] == [
        (str(second), "frame 0", f"duplicate id 'dft.extxyz:0' (first seen at {first}:frame 0)"),
        (str(second), "frame 1", f"duplicate id 'dft.extxyz:1' (first seen at {first}:frame 1)"),
    ]


def test_truncated_extxyz_yields_the_complete_frames_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "dft.extxyz"
    ase.io.write(path, [a for a, _ in _dft_frames()], format="extxyz")
    lines = path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.extxyz"
    cut.write_text("".join(lines[: len(lines) - 5]))  # the last Ge frame loses 5 of its 12 atoms
    reader = make_reader(cut, "ase")
    seen = []
    with pytest.raises(SourceError, match="ASE cannot read frame 6") as info:
        for item in reader.items():
            seen.append(item.locator)
    assert info.value.path == str(cut)
    assert seen == [f"frame {k}" for k in range(6)]
    with pytest.raises(SourceError, match="frame 6"):
        convert([cut], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_empty_and_unreadable_files_are_source_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(SourceError, match="file is empty") as info:
        convert([empty], tmp_path / "out", fmt="ase")
    assert info.value.path == str(empty)
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("3\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nthis is not a structure\n")
    with pytest.raises(SourceError, match="ASE cannot read frame 0") as info:
        convert([garbage], tmp_path / "out", fmt="ase")
    assert info.value.path == str(garbage)


# -- databases and trajectories --------------------------------------------------------------

@pytest.mark.parametrize("name", ["dft.db", "dft.json"])
def test_ase_database_rows_ids_and_key_value_pairs(tmp_path: Path, name: str) -> None:
    frames = _dft_frames()
    path = tmp_path / name
    with ase.db.connect(path) as db:
        for k, (atoms, want) in enumerate(frames):
            db.write(atoms, material=want["material"], gap=0.5 * k, relaxed=(k == 3))
    assert detect_format(path) == "ase" and file_kind(path) == "db"
    report = convert([path], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (7, 0)
    back = list(open_dataset(tmp_path / "out"))
    assert [r.id for r in back] == [f"{name}:{k}" for k in range(1, 8)]  # ASE row ids count from 1
    for k, (rec, (_, want)) in enumerate(zip(back, frames)):
        _assert_labels(rec, want)
        # numeric and boolean key-value pairs become properties; text ones do not
        assert rec.properties == {"gap": 0.5 * k, "relaxed": float(k == 3)}
    only_gap = _records(path, properties="gap", trajectory="material")
    assert [r.properties for r in only_gap] == [{"gap": 0.5 * k} for k in range(7)]
    assert [r.trajectory for r in only_gap] == ["mp-135"] * 4 + ["mp-129"] + ["mp-32"] * 2


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE things (x INTEGER)")
    before = path.read_bytes()
    with pytest.raises(SourceError, match="not an ASE database") as info:
        convert([path], tmp_path / "out", fmt="ase")
    assert info.value.path == str(path)
    assert path.read_bytes() == before


def test_trajectory_file_is_one_trajectory(tmp_path: Path) -> None:
    frames = _dft_frames()[:4]  # the Li cells
    path = tmp_path / "li.traj"
    ase.io.write(path, [a for a, _ in frames])
    assert detect_format(path) == "ase" and file_kind(path) == "traj"
    recs = _records(path)
    assert [(r.id, r.trajectory, r.frame) for r in recs] == [(f"li.traj:{k}", "li.traj", k) for k in range(4)]
    for rec, (_, want) in zip(recs, frames):
        _assert_labels(rec, want)


# -- VASP ------------------------------------------------------------------------------------

def _relaxation_outcar(folder: Path, steps: int, converged: bool) -> Path:
    """ASE's example OUTCAR with its ionic step repeated ``steps`` times (and VASP's convergence
    line if ``converged``): the shape of a relaxation's OUTCAR, with real numbers in every step."""
    lines = (ASE_VASP / "OUTCAR_example_1").read_text().splitlines(keepends=True)
    first = next(k for k, line in enumerate(lines) if "Iteration" in line)
    end = next(k for k, line in enumerate(lines) if "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" in line) + 5
    step = lines[first:end]
    body = lines[:end] + step * (steps - 1)
    if converged:
        body.append(" reached required accuracy - stopping structural energy minimisation\n")
    folder.mkdir()
    path = folder / "OUTCAR"
    path.write_text("".join(body + lines[end:]))
    return path


@needs_ase_vasp_data
def test_outcar_energy_forces_and_stress_from_the_kbar_line(tmp_path: Path) -> None:
    (tmp_path / "ni").mkdir()
    path = tmp_path / "ni" / "OUTCAR"
    shutil.copyfile(ASE_VASP / "OUTCAR_example_1", path)
    assert detect_format(path) == "ase" and file_kind(path) == "vasp-out"
    [rec] = _records(path)
    assert rec.id == "ni/OUTCAR:0" and rec.trajectory == "ni/OUTCAR" and rec.frame == 0
    assert rec.equilibrium is None  # a single point (NSW = 0): nothing says it is relaxed
    assert rec.natoms == 18 and set(rec.numbers.tolist()) == {28}
    assert rec.energy == -68.23102426  # "energy(sigma->0)" of the OUTCAR
    assert rec.properties == {"free_energy": -68.22868532}  # TOTEN
    np.testing.assert_allclose(rec.forces[0], [0.030415, -0.114705, -0.460114], atol=1e-12)
    # "in kB  -4.29429 -4.58894 -4.50342 0.50047 -0.94049 0.36481" (xx yy zz xy yz zx, VASP sign)
    kbar = np.array([[-4.29429, 0.50047, 0.36481], [0.50047, -4.58894, -0.94049], [0.36481, -0.94049, -4.50342]])
    np.testing.assert_allclose(rec.stress, -kbar * KBAR_TO_EV_PER_A3, rtol=1e-6)
    assert rec.stress[0, 0] > 0  # VASP's negative (tensile) pressure is positive in ASE's sign


@needs_ase_vasp_data
def test_relaxation_outcar_frames_share_a_trajectory_and_the_converged_end_is_relaxed(tmp_path: Path) -> None:
    converged = _relaxation_outcar(tmp_path / "relax", steps=3, converged=True)
    recs = _records(converged)
    assert [(r.id, r.trajectory, r.frame, r.equilibrium) for r in recs] == [
        ("relax/OUTCAR:0", "relax/OUTCAR", 0, False),
        ("relax/OUTCAR:1", "relax/OUTCAR", 1, False),
        ("relax/OUTCAR:2", "relax/OUTCAR", 2, True),
    ]
    assert all(r.energy == -68.23102426 for r in recs)
    [last] = _records(converged, index="-1")
    assert (last.frame, last.equilibrium) == (2, True)
    unconverged = _records(_relaxation_outcar(tmp_path / "stopped", steps=3, converged=False))
    assert [(r.frame, r.equilibrium) for r in unconverged] == [(0, None), (1, None), (2, None)]
    report = convert([converged], tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert report.num_records == 3
    assert manifest["statistics"]["equilibrium"] == {"relaxed": 1, "off_equilibrium": 2, "unknown": 0}
    assert manifest["statistics"]["num_trajectories"] == 1
    assert any("kBar" in c for c in manifest["sources"][0]["conversions"])


@needs_ase_vasp_data
def test_vasprun_xml(tmp_path: Path) -> None:
    (tmp_path / "c2").mkdir()
    path = tmp_path / "c2" / "vasprun.xml"
    shutil.copyfile(ASE_VASP / "vasprun_pstress.xml", path)
    assert detect_format(path) == "ase" and file_kind(path) == "vasp-xml"
    [rec] = _records(path)
    assert rec.id == "c2/vasprun.xml:0" and rec.equilibrium is None
    assert rec.numbers.tolist() == [6, 6]
    assert rec.energy == pytest.approx(-20.2472, abs=1e-4)
    # <varray name="stress">: -165.99562580 kBar on the diagonal, VASP sign
    np.testing.assert_allclose(np.diag(rec.stress), [165.99562580 * KBAR_TO_EV_PER_A3] * 3, rtol=1e-9)
    np.testing.assert_allclose(rec.stress - np.diag(np.diag(rec.stress)), 0, atol=1e-12)


# -- sniffing --------------------------------------------------------------------------------

def test_sniffing_by_name_and_content(tmp_path: Path) -> None:
    atoms = [a for a, _ in _dft_frames()[:2]]
    ase.io.write(tmp_path / "a.extxyz", atoms, format="extxyz")
    ase.io.write(tmp_path / "frames.txt", atoms, format="extxyz")  # content says extxyz
    (tmp_path / "plain.xyz").write_text("2\nmolecule\nH 0 0 0\nH 0 0 0.74\n")
    (tmp_path / "notes.txt").write_text("2\nnot a structure\n")
    (tmp_path / "fake.db").write_text("not sqlite")
    for name in ["a.extxyz", "frames.txt", "plain.xyz"]:
        assert detect_format(tmp_path / name) == "ase", name
    for name in ["notes.txt", "fake.db"]:
        assert not AseReader.sniff(tmp_path / name), name
    # the other readers' files are not ASE's
    for other in [MPTRJ, FIXTURES / "matbench" / "matbench_jdft2d.json.gz", FIXTURES / "mlearn" / "Li_training.json",
                  FIXTURES / "matdeeplearn" / "jdft2d.json", FIXTURES / "perov5" / "val.csv", FIXTURES / "cgcnn",
                  FIXTURES / "cgcnn" / "atom_init.json"]:
        assert not AseReader.sniff(other), other


def test_explicit_format_leaves_unrecognised_files_to_ase(tmp_path: Path) -> None:
    atoms, want = _dft_frames()[3]  # the Li ground state
    path = tmp_path / "POSCAR"
    ase.io.write(path, atoms, format="vasp", direct=False)
    assert not AseReader.sniff(path)
    with pytest.raises(SourceError, match="cannot tell the format"):
        detect_format(path)
    [rec] = _records(path)
    assert rec.id == "POSCAR:0" and rec.energy is None and rec.forces is None and rec.stress is None
    np.testing.assert_allclose(rec.positions, want["positions"], atol=1e-8)
    np.testing.assert_allclose(rec.cell, atoms.cell.array, atol=1e-12)
