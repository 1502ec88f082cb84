"""CGCNN folder reader on real rows of CGCNN's sample-regression folder (tests/fixtures/cgcnn)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.cgcnn_folder import CgcnnFolderReader
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
CGCNN = FIXTURES / "cgcnn"
CSCL_SITES = "_atom_site_fract_z\nCs 0.00000 0.00000 0.00000\nCl 0.50000 0.50000 0.50000"


def _records(path: Path, **options: str) -> list:
    reader = make_reader(path, "cgcnn", options)
    return [reader.to_record(item) for item in reader.items()]


def _skipped(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A writable copy of the fixture folder."""
    dst = tmp_path / "cgcnn"
    shutil.copytree(CGCNN, dst)
    return dst


def test_records_hold_the_cif_structures_and_targets() -> None:
    recs = {r.id: r for r in _records(CGCNN)}
    assert list(recs) == ["1000050", "9000046", "9009743"]
    assert {k: r.properties for k, r in recs.items()} == {
        "1000050": {"target": 2.0}, "9000046": {"target": 6.0}, "9009743": {"target": 7.0}}
    cscl = recs["9009743"]  # CsCl, Pm-3m, a = 4.1150 Å in the CIF: one Cs at 0, one Cl at the body centre
    assert sorted(cscl.numbers.tolist()) == [17, 55]
    np.testing.assert_allclose(cscl.cell, np.eye(3) * 4.1150, atol=1e-9)
    cs, cl = cscl.positions[cscl.numbers == 55][0], cscl.positions[cscl.numbers == 17][0]
    np.testing.assert_allclose(np.abs(cl - cs), [2.0575] * 3, atol=1e-9)
    graphite = recs["9000046"]
    assert set(graphite.numbers.tolist()) == {6}
    assert graphite.pbc.tolist() == [True, True, True]
    assert all(r.energy is None and r.forces is None and r.stress is None for r in recs.values())
    assert all(r.equilibrium is True and r.trajectory == r.id for r in recs.values())


def test_property_names_option_and_several_target_columns(folder: Path) -> None:
    assert [r.properties for r in _records(folder, property_names="band_gap")][2] == {"band_gap": 7.0}
    (folder / "id_prop.csv").write_text("1000050,2.0,-0.5\n9009743,7.0,1.25\n")
    assert [r.properties for r in _records(folder)] == [
        {"target_0": 2.0, "target_1": -0.5}, {"target_0": 7.0, "target_1": 1.25}]
    assert _records(folder, property_names="a,b")[1].properties == {"a": 7.0, "b": 1.25}
    with pytest.raises(SourceError, match="2 target column"):
        _records(folder, property_names="only_one")


def test_a_header_row_names_the_properties(folder: Path) -> None:
    (folder / "id_prop.csv").write_text("material,formation_energy\n9009743,-1.5\n")
    [rec] = _records(folder)
    assert rec.id == "9009743" and rec.properties == {"formation_energy": -1.5}


def test_sniffing_picks_the_folder_and_its_id_prop_csv_only() -> None:
    assert detect_format(CGCNN) == "cgcnn"
    assert detect_format(CGCNN / "id_prop.csv") == "cgcnn"
    for other in [FIXTURES / "perov5" / "val.csv", FIXTURES / "carbon24", FIXTURES / "matdeeplearn" / "jdft2d.json",
                  FIXTURES / "mlearn" / "Li_training.json", CGCNN / "9009743.cif", CGCNN / "atom_init.json"]:
        assert not CgcnnFolderReader.sniff(other), other


def test_manifest_lists_checksums_and_notes_atom_init(tmp_path: Path) -> None:
    report = convert([CGCNN], tmp_path / "out")
    assert report.num_records == 3 and report.num_skipped == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [source] = manifest["sources"]
    files = {Path(f["path"]).name: f["sha256"] for f in source["files"]}
    assert set(files) == {"id_prop.csv", "atom_init.json", "1000050.cif", "9000046.cif", "9009743.cif"}
    assert files["9009743.cif"] == hashlib.sha256((CGCNN / "9009743.cif").read_bytes()).hexdigest()
    assert any("atom_init.json" in note and "4 elements" in note for note in source["conversions"])
    back = {r.id: r for r in open_dataset(tmp_path / "out")}
    assert back["9009743"].properties == {"target": 7.0}


def test_bad_rows_are_skipped_with_file_record_and_reason(folder: Path, tmp_path: Path) -> None:
    cscl = (folder / "9009743.cif").read_text()
    assert CSCL_SITES in cscl
    (folder / "partial.cif").write_text(cscl.replace(CSCL_SITES, "_atom_site_fract_z\n_atom_site_occupancy\n"
                                                     "Cs 0.00000 0.00000 0.00000 0.5\nCl 0.50000 0.50000 0.50000 1.0"))
    (folder / "mendelevium.cif").write_text(cscl.replace("Cs 0.00000", "Md 0.00000"))
    (folder / "corrupt.cif").write_text(cscl[: len(cscl) // 3])
    (folder / "id_prop.csv").write_text(
        "1000050,2.0\n"
        "missing,1.0\n"
        "corrupt,1.0\n"
        "partial,1.0\n"
        "mendelevium,1.0\n"
        "9000046,nan\n"
        "9009743,7.0\n"
        "9009743,8.0\n"
        "../9009743,1.0\n"
        "9000046,1.0,2.0\n"
    )
    report = convert([folder], tmp_path / "out")
    assert report.num_records == 2  # 1000050 and the first 9009743
    skipped = {s["record"]: s for s in _skipped(tmp_path / "out")}
    assert all(s["file"] == str(folder) for s in skipped.values())
    reasons = {loc: s["reason"] for loc, s in skipped.items()}
    assert reasons["id_prop.csv line 2"] == "no CIF file missing.cif for id 'missing'"
    assert reasons["id_prop.csv line 3"].startswith("corrupt.cif: unreadable CIF")
    assert "partially occupied" in reasons["id_prop.csv line 4"]
    assert reasons["id_prop.csv line 5"] == "atomic number 101 outside 1..100"
    assert reasons["id_prop.csv line 6"] == "target 'target' is nan"
    assert reasons["id_prop.csv line 8"].startswith("duplicate id '9009743'")
    assert skipped["id_prop.csv line 8"]["id"] == "9009743"
    assert "not a plain file name" in reasons["id_prop.csv line 9"]
    assert reasons["id_prop.csv line 10"] == "2 target value(s), expected 1 (target)"
    assert len(skipped) == 8
    assert [r.properties["target"] for r in open_dataset(tmp_path / "out")] == [2.0, 7.0]


def test_empty_or_missing_id_prop_is_a_source_error(folder: Path, tmp_path: Path) -> None:
    (folder / "id_prop.csv").write_text("\n\n")
    with pytest.raises(SourceError, match="id_prop.csv: empty"):
        convert([folder], tmp_path / "out", fmt="cgcnn")
    assert not (tmp_path / "out").exists()
    (folder / "id_prop.csv").unlink()
    with pytest.raises(SourceError, match="id_prop.csv: cannot open"):
        convert([folder], tmp_path / "out", fmt="cgcnn")


def test_cli_reports_an_empty_id_prop_in_one_line(folder: Path, tmp_path: Path, capsys) -> None:
    from matforge.cli.main import main

    (folder / "id_prop.csv").write_text("")
    assert main(["data", "convert", str(folder), "--out", str(tmp_path / "out"), "--format", "cgcnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err == f"matforge: error: {folder / 'id_prop.csv'}: empty (no data rows)"


def test_a_byte_order_mark_in_id_prop_is_ignored(folder: Path) -> None:
    (folder / "id_prop.csv").write_bytes(b"\xef\xbb\xbf9009743,7.0\r\n")
    [rec] = _records(folder)
    assert rec.id == "9009743" and rec.properties == {"target": 7.0}
