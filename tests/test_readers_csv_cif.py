"""CSV + CIF reader on real rows of CDVAE's perov_5 and carbon_24 (tests/fixtures/{perov5,carbon24})."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.csv_cif import CsvCifReader
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
PEROV5 = FIXTURES / "perov5" / "val.csv"
CARBON24 = FIXTURES / "carbon24" / "val.csv"


def _records(path: Path, **options: str) -> list:
    reader = make_reader(path, "csv-cif", options)
    return [reader.to_record(item) for item in reader.items()]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_perov5_rows() -> None:
    recs = _records(PEROV5)
    assert [r.id for r in recs] == ["18517", "15400", "3409"]
    cdcun3 = recs[0]
    assert cdcun3.properties == {"heat_all": 2.76, "heat_ref": 2.709152583232041, "dir_gap": 0.0, "ind_gap": 0.0}
    assert sorted(cdcun3.numbers.tolist()) == [7, 7, 7, 29, 48]
    a = 4.27928426  # cubic cell of the CIF
    np.testing.assert_allclose(cdcun3.cell, np.eye(3) * a, atol=1e-8)
    cd = cdcun3.positions[cdcun3.numbers == 48][0]
    np.testing.assert_allclose(cd, np.array([0.50071723, 0.5, 0.5]) * a, atol=1e-7)
    assert cdcun3.energy is None and cdcun3.forces is None and cdcun3.stress is None
    assert all(r.equilibrium is True and r.trajectory == r.id for r in recs)
    assert recs[2].properties["heat_ref"] == 1.1059760889280128


def test_carbon24_energy_column_option() -> None:
    [first, second] = _records(CARBON24)
    assert first.id == "C-148264-7891-51" and first.properties == {"energy_per_atom": -154.223695}
    assert set(first.numbers.tolist()) == {6} and first.natoms == 8  # C0..C7 in the CIF
    as_energy = _records(CARBON24, energy_per_atom_column="energy_per_atom")
    assert as_energy[0].energy == pytest.approx(-154.223695 * 8, rel=1e-15)
    assert as_energy[0].properties == {}
    assert as_energy[1].energy == pytest.approx(-154.13165216666667 * second.natoms, rel=1e-15)
    assert any("eV/atom x natoms" in c for c in make_reader(CARBON24, "csv-cif",
                                                            {"energy_per_atom_column": "energy_per_atom"}).conversions)


def test_sniffing() -> None:
    assert detect_format(PEROV5) == "csv-cif"
    assert detect_format(CARBON24) == "csv-cif"
    for other in [FIXTURES / "cgcnn" / "id_prop.csv", FIXTURES / "cgcnn",
                  FIXTURES / "matdeeplearn" / "jdft2d.json", FIXTURES / "mlearn" / "Li_training.json"]:
        assert not CsvCifReader.sniff(other), other


def test_convert_and_read_back(tmp_path: Path) -> None:
    report = convert([PEROV5, CARBON24], tmp_path / "out")
    assert (report.num_records, report.num_atoms, report.num_skipped) == (5, 3 * 5 + 8 + 6, 0)
    back = {r.id: r for r in open_dataset(tmp_path / "out")}
    assert back["15400"].properties["heat_all"] == 1.16
    assert back["C-130499-1826-45"].properties == {"energy_per_atom": -154.13165216666667}


def test_bad_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    header, rows = _rows(PEROV5)
    cif = rows[0]["cif"]
    bad = [
        rows[0],
        {**rows[1], "cif": cif[: len(cif) // 2]},
        {**rows[1], "material_id": "partial", "cif": cif.replace("Cd1  1  0.50071723  0.50000000  0.50000000  1",
                                                                  "Cd1  1  0.50071723  0.50000000  0.50000000  0.5")},
        {**rows[1], "material_id": "nan_label", "heat_ref": "nan"},
        {**rows[1], "material_id": "heavy", "cif": cif.replace("  Cd  Cd1", "  Md  Md1")},
        {**rows[2], "material_id": "18517"},
        {**rows[2], "material_id": ""},
        rows[2],
    ]
    assert bad[2]["cif"] != cif and bad[4]["cif"] != cif
    path = _write(tmp_path / "bad.csv", header, bad)
    report = convert([path], tmp_path / "out")
    assert report.num_records == 2
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert all(s["file"] == str(path) for s in skipped)
    reasons = {s["record"]: s["reason"] for s in skipped}
    assert reasons["row 2"].startswith("unreadable CIF")
    assert reasons["row 3"].endswith("is partially occupied (Cd:0.5); matforge needs ordered structures")
    assert reasons["row 4"] == "label 'heat_ref' is nan"
    assert reasons["row 5"] == "atomic number 101 outside 1..100"
    assert reasons["row 6"] == f"duplicate id '18517' (first seen at {path}:row 1)"
    assert reasons["row 7"] == "empty id in column 'material_id'"
    assert len(reasons) == 6
    assert [r.id for r in open_dataset(tmp_path / "out")] == ["18517", "3409"]


@pytest.mark.parametrize("text, fmt, message", [
    ("", "auto", "file is empty"),
    ("", "csv-cif", "empty CSV"),
    (",material_id,cif,heat_ref\n", "csv-cif", "no data rows"),
    ("material_id,structure\n1,x\n", "csv-cif", "no 'cif' column"),
    ("material_id,cif\n1,\"data_\xff\"\n", "csv-cif", "can.t decode byte 0xff"),  # written as Latin-1
])
def test_whole_file_failures_name_the_file(tmp_path: Path, text: str, fmt: str, message: str) -> None:
    path = tmp_path / "val.csv"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(SourceError, match=message) as info:
        convert([path], tmp_path / "out", fmt=fmt)
    assert info.value.path == str(path)
    assert not (tmp_path / "out").exists()


def test_cli_reports_an_empty_file_in_one_line(tmp_path: Path, capsys) -> None:
    from matforge.cli.main import main

    path = tmp_path / "val.csv"
    path.write_text("")
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"matforge: error: {path}: file is empty\n"
