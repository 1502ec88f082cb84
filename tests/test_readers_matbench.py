"""Matbench reader on real matbench_jdft2d rows (tests/fixtures/matbench): ids, structures, target
property, key order, bad rows, whole-file failures and streaming."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.matbench import MatbenchReader, task_name
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
JDFT2D = FIXTURES / "matbench" / "matbench_jdft2d.json.gz"
IDS = ["mb-jdft2d-0", "mb-jdft2d-78", "mb-jdft2d-302", "mb-jdft2d-336", "mb-jdft2d-471"]
# exfoliation energies (meV/atom) of those rows, as MatDeepLearn's copy of the task stores them
EXFOLIATION = [63.593833333333016, 571.6572, 70.35500000000106, 58.90449999999969, 150.5481500000001]


def _records(path: Path = JDFT2D, **options: str) -> list:
    reader = make_reader(path, "matbench", options)
    return [reader.to_record(item) for item in reader.items()]


def _table() -> dict:
    return json.loads(gzip.decompress(JDFT2D.read_bytes()))


def _write(path: Path, table: dict | str, gz: bool = False) -> Path:
    text = table if isinstance(table, str) else json.dumps(table)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_ids_target_and_structures() -> None:
    recs = _records()
    assert [r.id for r in recs] == IDS
    assert [r.trajectory for r in recs] == IDS
    assert [r.properties for r in recs] == [{"exfoliation_en": y} for y in EXFOLIATION]
    assert all(r.energy is None and r.forces is None and r.stress is None for r in recs)
    assert all(r.equilibrium is True and r.frame is None for r in recs)
    assert [r.numbers.tolist() for r in recs[:3]] == [[72, 72, 14, 14, 52, 52], [51], [6, 6]]
    hfsite = recs[0]
    np.testing.assert_allclose(hfsite.cell, [[3.6673053432782647, 0, 0], [0, 3.6673053432782647, 0], [0, 0, 27.311209]],
                               atol=1e-12)
    np.testing.assert_allclose(hfsite.positions[1], [3.3268840574831082, 1.4932313858439759, 3.048632550223126],
                               atol=1e-9)
    graphene = recs[2]
    np.testing.assert_allclose(graphene.positions[1], [1.2320971008984494, 0.7113528327610399, 1.9507586130900183],
                               atol=1e-9)
    assert graphene.pbc.tolist() == [True, True, True]


def test_task_name_and_string_index() -> None:
    assert task_name(Path("matbench_jdft2d.json.gz")) == "jdft2d"
    assert task_name(Path("matbench_mp_e_form.json")) == "mp_e_form"
    assert task_name(Path("my_table.json")) == "my_table"


def test_any_key_order_plain_json_and_matbench_string_ids(tmp_path: Path) -> None:
    table = _table()
    reordered = {"data": table["data"], "columns": table["columns"],
                 "index": [f"mb-jdft2d-{k + 1:03d}" for k in range(len(table["index"]))]}
    path = _write(tmp_path / "matbench_jdft2d.json", reordered)
    assert detect_format(path) == "matbench"
    recs = _records(path)
    assert [r.id for r in recs] == ["mb-jdft2d-001", "mb-jdft2d-002", "mb-jdft2d-003", "mb-jdft2d-004", "mb-jdft2d-005"]
    assert [r.properties["exfoliation_en"] for r in recs] == EXFOLIATION
    np.testing.assert_array_equal(recs[0].positions, _records()[0].positions)


def test_several_target_columns_booleans_nulls_and_text(tmp_path: Path) -> None:
    table = _table()
    table["columns"] = ["formula", "structure", "is_metal", "exfoliation_en"]
    table["data"] = [["HfSiTe", row[0], k % 2 == 0, row[1] if k != 1 else None] for k, row in enumerate(table["data"])]
    recs = _records(_write(tmp_path / "multi.json.gz", table, gz=True))
    assert recs[0].properties == {"is_metal": 1.0, "exfoliation_en": EXFOLIATION[0]}
    assert recs[1].properties == {"is_metal": 0.0}  # null target left out, text column ignored


def test_sniffing() -> None:
    assert detect_format(JDFT2D) == "matbench"
    for other in [FIXTURES / "mptrj" / "mptrj_fixture.json", FIXTURES / "mlearn" / "Li_training.json",
                  FIXTURES / "matdeeplearn" / "jdft2d.json", FIXTURES / "perov5" / "val.csv",
                  FIXTURES / "cgcnn" / "atom_init.json"]:
        assert not MatbenchReader.sniff(other), other


def test_round_trip_through_shards(tmp_path: Path) -> None:
    report = convert([JDFT2D], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (5, 0)
    expected = {r.id: r for r in _records()}
    back = list(open_dataset(tmp_path / "out"))
    assert [r.id for r in back] == IDS
    for rec in back:
        np.testing.assert_array_equal(rec.positions, expected[rec.id].positions)
        assert rec.properties == expected[rec.id].properties
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["labels"]["properties"] == {"exfoliation_en": 5}
    assert manifest["statistics"]["property:exfoliation_en"]["mean"] == pytest.approx(np.mean(EXFOLIATION), rel=1e-12)
    assert manifest["sources"][0]["format"] == "matbench"


def test_bad_rows_are_skipped_with_file_record_and_reason(tmp_path: Path) -> None:
    table = _table()
    rows = table["data"]
    rows[1][1] = float("nan")  # json.dumps writes a bare NaN token
    rows[2][0]["sites"][0]["species"] = [{"element": "C", "occu": 0.5}]
    rows[3][0]["sites"][1]["species"] = [{"element": "Md", "occu": 1}]
    rows.append([copy.deepcopy(rows[0][0]), None])  # no target
    rows.append([rows[0][0]])  # short row
    rows.append(copy.deepcopy(rows[4]))  # same index value as row 4 -> duplicate id
    table["index"] += [900, 901, 471]
    path = _write(tmp_path / "matbench_jdft2d.json.gz", table, gz=True)
    report = convert([path], tmp_path / "out")
    assert report.num_records == 2
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert all(row["file"] == str(path) for row in skipped)
    assert {row["record"]: row["reason"] for row in skipped} == {
        "row 1 (index 78)": "property 'exfoliation_en' is NaN or inf",
        "row 2 (index 302)": "site 0 is partially occupied (C:0.5); matforge needs ordered structures",
        "row 3 (index 336)": "atomic number 101 outside 1..100",
        "row 5 (index 900)": "no numeric target value (columns ['exfoliation_en'])",
        "row 6 (index 901)": "row is not a list of 2 values (columns ['structure', 'exfoliation_en'])",
        "row 7 (index 471)": f"duplicate id 'mb-jdft2d-471' (first seen at {path}:row 4 (index 471))",
    }
    assert [r.id for r in open_dataset(tmp_path / "out")] == ["mb-jdft2d-0", "mb-jdft2d-471"]


def test_truncated_file_streams_its_first_rows_then_fails(tmp_path: Path) -> None:
    table = _table()
    table["data"] = table["data"] * 40
    table["index"] = list(range(len(table["data"])))
    text = json.dumps(table)
    path = _write(tmp_path / "matbench_jdft2d.json.gz", text[: len(text) // 2], gz=True)
    reader = make_reader(path, "matbench")
    seen = []
    with pytest.raises(SourceError, match="truncated JSON") as info:
        for item in reader.items():
            seen.append(item.payload[0])
    assert info.value.path == str(path)
    assert seen[:6] == ["mb-jdft2d-0", "mb-jdft2d-1", "mb-jdft2d-2", "mb-jdft2d-3", "mb-jdft2d-4", "mb-jdft2d-5"]
    assert 50 < len(seen) < 200


def test_cut_or_corrupt_gzip_streams_are_source_errors(tmp_path: Path) -> None:
    data = JDFT2D.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[600:640] = b"x" * 40
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(bytes(corrupt))
    for path, message in [(cut, "truncated gzip stream"), (bad, "corrupt gzip stream|invalid JSON")]:
        with pytest.raises(SourceError, match=message) as info:
            convert([path], tmp_path / "out", fmt="matbench")
        assert info.value.path == str(path)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("not json at all", "invalid JSON"),
    ('[{"structure": 1}]', "no 'columns' key"),
    ('{"index": [0], "columns": ["composition", "gap expt"], "data": [["Si", 1.1]]}', "no 'structure' column"),
    ('{"index": [0, 1], "columns": ["structure", "y"], "data": [[null, 1.0]]}', "'index' has 2 entries but 'data' has 1"),
    ('{"index": [0], "columns": ["structure", "y"], "data": [[null, 1.0], [null, 2.0]]}', "more rows than 'index'"),
    ('{"columns": ["structure", "y"], "data": []}', "no 'index' list"),
])
def test_whole_file_failures_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "matbench_x.json", text)
    with pytest.raises(SourceError, match=message) as info:
        convert([path], tmp_path / "out", fmt="matbench")
    assert info.value.path == str(path)
    assert not (tmp_path / "out").exists()
