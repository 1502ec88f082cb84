"""mlearn JSON reader on real Li and Mo structures (tests/fixtures/mlearn): units, stress sign and
order, trajectories, bad input."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.mlearn import MlearnReader, classify
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
LI = FIXTURES / "mlearn" / "Li_training.json"
MO_SHEAR = FIXTURES / "mlearn" / "Mo_training_shear.json"
KBAR_TO_EV_PER_A3 = 0.1 / 160.21766208  # 1 kBar = 0.1 GPa; 1 eV/Å³ = 160.21766208 GPa

# fixture order: vacancy AIMD snapshots 1 and 2 (300 K), surface (1 0 0), elastic mode 1 at strain
# -0.01 and +0.005, elastic mode 4 (yz shear) at 0.005, ground state
VAC1, VAC2, SURFACE, COMPRESSED, STRETCHED, SHEARED, GROUND = range(7)


def _records(path: Path, **options: str) -> list:
    reader = make_reader(path, "mlearn", options)
    return [reader.to_record(item) for item in reader.items()]


def test_ids_structures_energy_and_forces() -> None:
    recs = _records(LI)
    assert [r.id for r in recs] == [f"Li-train-{k}" for k in range(7)]
    assert [r.natoms for r in recs] == [53, 53, 6, 2, 2, 2, 2]
    assert all(set(r.numbers.tolist()) == {3} for r in recs)
    vac = recs[VAC1]
    assert vac.energy == -98.30410711  # total eV, as stored
    assert vac.forces.shape == (53, 3)
    np.testing.assert_array_equal(vac.forces[0], [0.10077914, -0.3208013, 0.26922835])
    np.testing.assert_allclose(vac.cell, np.eye(3) * 10.2805, atol=1e-4)
    assert vac.pbc.tolist() == [True, True, True]
    np.testing.assert_allclose(recs[GROUND].positions[1], [1.7134085] * 3)
    assert recs[GROUND].energy == -3.79784039


def test_virial_stress_becomes_ase_sign_ev_per_a3() -> None:
    recs = _records(LI)
    compressed, stretched, ground = recs[COMPRESSED].stress, recs[STRETCHED].stress, recs[GROUND].stress
    # virial_stress of the compressed cell: [3.23911494, 2.99052207, 2.99052207, 0, 0, 0] kBar, VASP sign
    np.testing.assert_allclose(np.diag(compressed), -np.array([3.23911494, 2.99052207, 2.99052207]) * KBAR_TO_EV_PER_A3,
                               rtol=1e-12)
    assert compressed[0, 0] == pytest.approx(-0.0020217, abs=1e-7)  # pushes outwards: negative in ASE's sign
    assert np.count_nonzero(compressed - np.diag(np.diag(compressed))) == 0
    # stress grows with strain along x: compressed < ground state < stretched
    assert compressed[0, 0] < ground[0, 0] < stretched[0, 0]
    assert all(r.stress.shape == (3, 3) and np.array_equal(r.stress, r.stress.T) for r in recs)


def test_stress_equals_the_energy_derivative_of_the_strained_cells() -> None:
    """σ_xx = (1/V) dE/dε_xx at the ground state, from the three cells of 'mode 1' (a stretched along x)."""
    recs = _records(LI)
    cells = [recs[k] for k in (COMPRESSED, GROUND, STRETCHED)]
    strains = np.array([r.cell[0, 0] / recs[GROUND].cell[0, 0] - 1 for r in cells])  # ~ -0.01, 0, +0.005
    np.testing.assert_allclose(strains, [-0.01, 0.0, 0.005], atol=2e-4)
    assert all(np.array_equal(r.cell[1:], recs[GROUND].cell[1:]) for r in cells)
    energies = np.array([r.energy for r in cells])
    slope = np.polyfit(strains, energies, 2)[1]  # dE/dε at ε = 0, eV
    ground = recs[GROUND]
    assert slope == pytest.approx(ground.volume * ground.stress[0, 0], rel=0.05)


def test_shear_components_follow_the_documented_order() -> None:
    sheared = _records(LI)[SHEARED]
    assert abs(sheared.cell[2, 1]) > 0.03 and sheared.cell[2, 0] == 0 and sheared.cell[1, 0] == 0  # yz shear
    off = {(i, j): abs(sheared.stress[i, j]) for i, j in [(0, 1), (1, 2), (0, 2)]}
    assert max(off, key=off.get) == (1, 2)
    assert sheared.stress[1, 2] == pytest.approx(-0.94340229 * KBAR_TO_EV_PER_A3, rel=1e-12)


def test_mo_file_needs_the_swapped_shear_order() -> None:
    """Mo/training.json stores (xy, xz, yz): a yz-sheared cell (b has a z component, strain +0.04)
    carries its -43.29 kBar at position 5. With ``stress_order`` it lands on yz with a positive ASE
    stress, as a positive shear strain of a stable crystal must give."""
    [default] = _records(MO_SHEAR)
    [fixed] = _records(MO_SHEAR, stress_order="xx,yy,zz,xy,xz,yz")
    assert default.cell[1, 2] == pytest.approx(0.04 * default.cell[1, 1], rel=1e-6)
    assert default.stress[0, 2] == pytest.approx(43.2903 * KBAR_TO_EV_PER_A3, rel=1e-12)
    assert fixed.stress[1, 2] == fixed.stress[2, 1] == pytest.approx(43.2903 * KBAR_TO_EV_PER_A3, rel=1e-12)
    assert fixed.stress[0, 2] == pytest.approx(-0.25252 * KBAR_TO_EV_PER_A3, rel=1e-12)
    assert fixed.stress[1, 2] > 0
    with pytest.raises(SourceError, match="stress_order"):
        make_reader(MO_SHEAR, "mlearn", {"stress_order": "xx,yy,zz,xy,xy,yz"})


def test_trajectories_frames_and_equilibrium_flags() -> None:
    recs = _records(LI)
    got = [(r.trajectory, r.frame, r.equilibrium) for r in recs]
    assert got == [
        ("Li/Vacancy AIMD NVT simulation at 300 K", 1, False),
        ("Li/Vacancy AIMD NVT simulation at 300 K", 2, False),
        ("Li/surface Li_mp-135_(1_0_0)", None, None),
        ("Li/elastic", None, False),
        ("Li/elastic", None, False),
        ("Li/elastic", None, False),
        ("Li/elastic", None, True),
    ]
    # descriptions from the other files of the data set
    assert classify("Ge-train-1", "Ge", "AIMD-NVT",
                    "Snapshot 20000 of 100000 of AIMD NVT simulation for normal structure at 300 K") == (
        "Ge/AIMD NVT simulation for normal structure at 300 K", 20000, False)
    assert classify("Mo-train-192", "Mo", "Elastic", "Mo 3x3x3 cell relaxed") == ("Mo/elastic", None, True)
    assert classify("Mo-train-9", "Mo", "Elastic", "Mo 3x3x3 cell, mode 1, strain 0.0400") == ("Mo/elastic", None, False)
    assert classify("X-test-3", "X", "Other", "something else") == ("X-test-3", None, None)


def test_sniffing() -> None:
    assert detect_format(LI) == "mlearn"
    assert detect_format(MO_SHEAR) == "mlearn"
    for other in [FIXTURES / "matdeeplearn" / "jdft2d.json", FIXTURES / "matdeeplearn" / "pt_forces_500.json",
                  FIXTURES / "perov5" / "val.csv", FIXTURES / "cgcnn", FIXTURES / "cgcnn" / "atom_init.json"]:
        assert not MlearnReader.sniff(other), other


def test_converts_to_shards_with_the_conversion_in_the_manifest(tmp_path: Path) -> None:
    report = convert([LI, MO_SHEAR], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (8, 0)
    back = {r.id: r for r in open_dataset(tmp_path / "out")}
    assert back["Li-train-3"].stress[0, 0] == pytest.approx(-3.23911494 * KBAR_TO_EV_PER_A3, rel=1e-12)
    assert back["Li-train-1"].frame == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert all(any("kBar" in c and "ASE sign" in c for c in s["conversions"]) for s in manifest["sources"])
    assert manifest["labels"]["stress"] == 8


def test_bad_structures_are_skipped_with_reasons(tmp_path: Path) -> None:
    ground = json.loads(LI.read_text())[GROUND]

    def variant(**outputs) -> dict:
        entry = copy.deepcopy(ground)
        entry["outputs"].update(outputs)
        return entry

    partial, heavy, wrong_count, no_structure = (copy.deepcopy(ground) for _ in range(4))
    partial["structure"]["sites"][0]["species"] = [{"element": "Li", "occu": 0.5}]
    heavy["structure"]["sites"][1]["species"] = [{"element": "Md", "occu": 1}]
    wrong_count["num_atoms"] = 3
    del no_structure["structure"]
    entries = [ground, variant(forces=[[0.0, 0.0, 0.0]]), variant(energy=float("nan")),
               variant(virial_stress=[1.0, 2.0, 3.0, 0.0, 0.0]), partial, heavy, wrong_count, no_structure,
               {k: v for k, v in ground.items() if k != "outputs"}, "not an object"]
    path = tmp_path / "training.json"
    path.write_text(json.dumps(entries))
    report = convert([path], tmp_path / "out")
    assert report.num_records == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert all(row["file"] == str(path) for row in rows)
    reasons = {row["record"]: row["reason"] for row in rows}
    assert reasons == {
        "record 1": "forces have shape (1, 3), expected (2, 3)",
        "record 2": "energy contains NaN or inf",
        "record 3": "virial_stress has shape (5,), expected 6 values",
        "record 4": "site 0 is partially occupied (Li:0.5); matforge needs ordered structures",
        "record 5": "atomic number 101 outside 1..100",
        "record 6": "num_atoms is 3 but the structure has 2 sites",
        "record 7": "structure is not a pymatgen Structure dict (needs 'lattice' and 'sites')",
        "record 8": "no 'outputs' object",
        "record 9": "expected a JSON object, found str",
    }


def test_the_same_file_twice_gives_duplicate_ids(tmp_path: Path) -> None:
    copy_path = tmp_path / "again.json"
    shutil.copyfile(MO_SHEAR, copy_path)
    report = convert([MO_SHEAR, copy_path], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (1, 1)
    [row] = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert row["file"] == str(copy_path) and row["id"] == "Mo-train-0"
    assert row["reason"] == f"duplicate id 'Mo-train-0' (first seen at {MO_SHEAR}:record 0)"


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    (None, "looks truncated"),
    ('{"structure": {}}', "expected a JSON list of structures, found a dict"),
])
def test_whole_file_failures_name_the_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "training.json"
    path.write_text(LI.read_text()[:5000] if text is None else text)
    with pytest.raises(SourceError, match=message) as info:
        convert([path], tmp_path / "out", fmt="mlearn")
    assert info.value.path == str(path)


def test_cli_reports_a_truncated_file_in_one_line(tmp_path: Path, capsys) -> None:
    from matforge.cli.main import main

    path = tmp_path / "training.json"
    path.write_text(LI.read_text()[:5000])
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "out"), "--format", "mlearn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"matforge: error: {path}: invalid JSON (")


def test_ids_without_element_and_tag_fall_back_to_symbols_and_file_name(tmp_path: Path) -> None:
    entries = json.loads(LI.read_text())[GROUND:]
    for entry in entries:
        del entry["element"], entry["tag"]
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(entries))
    assert [r.id for r in _records(path)] == ["Li-extra-0"]
