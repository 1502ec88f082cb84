"""MatDeepLearn JSON reader on real structures of jdft2d, 2d_workfunction and pt_forces_500."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import RecordError, SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.base import RawItem
from matforge.datasets.readers.matdeeplearn import MatDeepLearnReader
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
MDL = FIXTURES / "matdeeplearn"
JDFT2D, PT, WORKFUNCTION = MDL / "jdft2d.json", MDL / "pt_forces_500.json", MDL / "2d_workfunction.json"


def _records(path: Path, **options: str) -> list:
    reader = make_reader(path, "matdeeplearn", options)
    return [reader.to_record(item) for item in reader.items()]


def _skipped(out: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    return {row["record"]: row["reason"] for row in rows}


def test_jdft2d_structures_and_targets() -> None:
    recs = _records(JDFT2D)
    assert [r.id for r in recs] == ["jdft2d/0", "jdft2d/1", "jdft2d/2"]
    hf2si2te2 = recs[0]
    assert hf2si2te2.numbers.tolist() == [72, 72, 14, 14, 52, 52]
    assert hf2si2te2.positions.shape == (6, 3)
    np.testing.assert_array_equal(hf2si2te2.positions[0], [1.4932313858439759, 3.3268840574831082, 7.262577851682005])
    np.testing.assert_array_equal(hf2si2te2.cell, np.diag([3.6673053432782647, 3.6673053432782647, 27.311209]))
    assert hf2si2te2.pbc.tolist() == [True, True, True]
    assert hf2si2te2.properties == {"y": 63.593833333333016}  # meV/atom, kept in the file's units
    assert [r.properties["y"] for r in recs[1:]] == [134.86375000000007, 43.11466666666686]
    assert all(r.energy is None and r.forces is None and r.stress is None for r in recs)
    assert all(r.trajectory == r.id and r.frame is None and r.equilibrium is None for r in recs)


def test_conversions_say_the_units_of_y() -> None:
    assert any("meV/atom" in note for note in make_reader(JDFT2D, "matdeeplearn").conversions)
    assert any("work function" in note for note in make_reader(WORKFUNCTION, "matdeeplearn").conversions)


def test_pt_clusters_energy_forces_and_relaxation_runs() -> None:
    recs = _records(PT)
    assert [r.id for r in recs] == [f"pt_forces_500/{k}" for k in range(192, 197)]
    first = recs[0]
    assert first.energy == -41.23505994  # total eV
    assert first.properties == {"y": -41.23505994}
    assert first.forces.shape == (10, 3)
    np.testing.assert_array_equal(first.forces[0], [0.00366618, -0.01234475, -0.01927339])
    assert recs[2].energy == -24.99452782
    np.testing.assert_array_equal(recs[2].forces[0], [-0.90364387, 1.20726712, 1.56512457])
    # 192-193 end the first relaxation run, 194 starts the second (atoms jump by 5.5 Å)
    assert [(r.trajectory, r.frame) for r in recs] == [
        ("pt_forces_500/192", 0), ("pt_forces_500/192", 1),
        ("pt_forces_500/194", 0), ("pt_forces_500/194", 1), ("pt_forces_500/194", 2)]
    # largest force components: 0.021, 0.019 (relaxed), then 13.9, 8.1, 4.5 eV/Å
    assert [r.equilibrium for r in recs] == [True, True, False, False, False]
    per_record = _records(PT, trajectory="record")
    assert [(r.trajectory, r.frame) for r in per_record] == [(r.id, None) for r in per_record]


def test_values_stored_as_strings_read_like_plain_json(tmp_path: Path) -> None:
    entries = json.loads(PT.read_text())[:2]
    stringly = [{k: (v if k == "structure_id" else json.dumps(v)) for k, v in e.items()} for e in entries]
    assert isinstance(stringly[0]["positions"], str) and isinstance(stringly[0]["energy"], str)
    path = tmp_path / "pt_forces_500.json"
    path.write_text(json.dumps(stringly))
    for a, b in zip(_records(path), _records(PT)):
        assert (a.id, a.energy, a.properties, a.trajectory, a.frame) == (b.id, b.energy, b.properties, b.trajectory, b.frame)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)


def test_strings_are_decoded_as_json_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    entry = json.loads(JDFT2D.read_text())[0]
    entry["positions"] = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    reader = MatDeepLearnReader(JDFT2D)
    with pytest.raises(RecordError, match="'positions' is a string that does not hold a JSON value"):
        reader.to_record(RawItem("record 0", (entry, None, None)))
    assert not marker.exists()


def test_options_property_name_pbc_id_prefix_and_several_targets(tmp_path: Path) -> None:
    entries = json.loads(JDFT2D.read_text())
    entries[1]["y"] = [1.5, -2.0]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries))
    recs = _records(path, property_name="exfoliation_energy", pbc="1,1,0", id_prefix="")
    assert [r.id for r in recs] == ["0", "1", "2"]
    assert recs[0].properties == {"exfoliation_energy": 63.593833333333016}
    assert recs[1].properties == {"exfoliation_energy_0": 1.5, "exfoliation_energy_1": -2.0}
    assert recs[0].pbc.tolist() == [True, True, False]
    assert [r.id for r in _records(path)] == [f"{tmp_path.name}/{k}" for k in range(3)]  # data.json: folder name
    with pytest.raises(SourceError, match="option pbc"):
        make_reader(path, "matdeeplearn", {"pbc": "yes,maybe,no"})


def test_sniffing() -> None:
    for path in (JDFT2D, PT, WORKFUNCTION):
        assert detect_format(path) == "matdeeplearn"
    for other in [FIXTURES / "mlearn" / "Li_training.json", FIXTURES / "mlearn" / "Mo_training_shear.json",
                  FIXTURES / "perov5" / "val.csv", FIXTURES / "cgcnn", FIXTURES / "cgcnn" / "atom_init.json"]:
        assert not MatDeepLearnReader.sniff(other), other


def test_several_sets_convert_together_and_read_back(tmp_path: Path) -> None:
    report = convert([JDFT2D, WORKFUNCTION, PT], tmp_path / "out")
    assert (report.num_records, report.num_skipped) == (10, 0)
    ds = open_dataset(tmp_path / "out")
    back = {r.id: r for r in ds}
    assert back["2d_workfunction/0"].numbers.tolist() == [47, 8, 47, 8]
    assert back["2d_workfunction/0"].properties == {"y": 5.479587735072619}
    assert back["pt_forces_500/194"].energy == -24.99452782
    assert back["pt_forces_500/195"].trajectory == "pt_forces_500/194" and back["pt_forces_500/195"].frame == 1


def test_bad_structures_are_skipped_with_reasons(tmp_path: Path) -> None:
    good = json.loads(PT.read_text())[:1]
    base = good[0]

    def variant(sid: str, **changes) -> dict:
        return {**base, "structure_id": sid, **changes}

    entries = [
        base,
        variant("short_forces", forces=base["forces"][:9]),
        variant("nan_y", y=float("nan")),
        variant("heavy", atomic_numbers=[101] + base["atomic_numbers"][1:]),
        variant("192"),  # duplicate of the first id
        variant("bad_string", positions="[[1, 2, 3], "),
        variant("no_numbers", atomic_numbers=None),
        variant("ragged", positions=base["positions"][:9] + [[1.0, 2.0]]),
        7,
    ]
    path = tmp_path / "pt.json"
    path.write_text(json.dumps(entries))  # json writes NaN as a bare NaN token, which the reader accepts
    assert "NaN" in path.read_text()
    report = convert([path], tmp_path / "out")
    assert report.num_records == 1
    reasons = _skipped(tmp_path / "out")
    assert reasons == {
        "record 1 (structure_id short_forces)": "forces have shape (9, 3), expected (10, 3)",
        "record 2 (structure_id nan_y)": "property 'y' is NaN or inf",
        "record 3 (structure_id heavy)": "atomic number 101 outside 1..100",
        "record 4 (structure_id 192)": "duplicate id 'pt/192' (first seen at "
                                       f"{path}:record 0 (structure_id 192))",
        "record 5 (structure_id bad_string)": reasons["record 5 (structure_id bad_string)"],
        "record 6 (structure_id no_numbers)": "no 'atomic_numbers'",
        "record 7 (structure_id ragged)": reasons["record 7 (structure_id ragged)"],
        "record 8": "expected a JSON object, found int",
    }
    assert reasons["record 5 (structure_id bad_string)"].startswith("'positions' is a string that does not hold a JSON value")
    assert reasons["record 7 (structure_id ragged)"].startswith("'positions' is not a numeric array")
    assert all(json.loads(line)["file"] == str(path) for line in (tmp_path / "out" / "skipped.jsonl").open())


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("   \n", "file is empty"),
    (None, "looks truncated"),
    ('{"structure_id": "0"}', "expected a JSON list of structures, found a dict"),
    ("[]", "holds no structures"),
])
def test_whole_file_failures_name_the_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(JDFT2D.read_text()[:700] if text is None else text)
    with pytest.raises(SourceError, match=message) as info:
        convert([path], tmp_path / "out", fmt="matdeeplearn")
    assert info.value.path == str(path)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_truncated_file_in_one_line(tmp_path: Path, capsys) -> None:
    from matforge.cli.main import main

    path = tmp_path / "jdft2d.json"
    path.write_text(JDFT2D.read_text()[:700])
    assert detect_format(path) == "matdeeplearn"
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"matforge: error: {path}: invalid JSON (") and "looks truncated" in err
