"""The conversion pipeline: quarantine of bad records, all-or-nothing output, exact statistics,
parallel = serial. Inputs are CSV+CIF files built in tmp dirs from EMT structures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from matforge.datasets import open_dataset
from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.manifest import INDEX_NAME, SKIPPED_NAME, Manifest
from matforge.datasets.record import Record
from matforge.datasets.synth import synth_records

BAD_CIF = "data_broken\n_cell_length_a  not-a-number\nloop_\n_atom_site_label\nX1\n"


def _cif(record: Record) -> str:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    structure = Structure(Lattice(record.cell), record.numbers, record.positions, coords_are_cartesian=True)
    return str(CifWriter(structure))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["material_id", "cif", "band_gap", "formula"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(records: list[Record], prefix: str) -> list[dict[str, str]]:
    return [{"material_id": f"{prefix}-{k}", "cif": _cif(r), "band_gap": f"{0.1 * k:.3f}", "formula": "x"}
            for k, r in enumerate(records)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """``a.csv``: 70 rows (two 64-row chunks) with 4 bad ones; ``b.csv``: 10 rows, one a duplicate
    of a.csv's first id. Returns the two paths and the ids expected in the output, in order."""
    folder = tmp_path_factory.mktemp("csv")
    records = list(synth_records(80, seed=9, max_atoms=8))
    a = _rows(records[:70], "a")
    a[3]["cif"] = BAD_CIF                          # row 4: unreadable CIF
    a[10]["band_gap"] = "nan"                      # row 11: NaN label
    a[20]["material_id"] = ""                      # row 21: no id
    a[66]["material_id"] = "a-5"                   # row 67: duplicate inside the file
    b = _rows(records[70:], "b")
    b[2]["material_id"] = "a-0"                    # row 3: duplicate of a.csv row 1
    expected = [r["material_id"] for k, r in enumerate(a) if k not in (3, 10, 20, 66)]
    expected += [r["material_id"] for k, r in enumerate(b) if k != 2]
    return _write_csv(folder / "a.csv", a), _write_csv(folder / "b.csv", b), expected


def _skipped(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / SKIPPED_NAME).read_text().splitlines()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "partial" in p.name or p.name.startswith("."))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_records_are_skipped_with_file_record_id_and_reason(sources, tmp_path):
    a, b, expected = sources
    report = convert([a, b], tmp_path / "out")
    ds = open_dataset(tmp_path / "out")
    assert [r.id for r in ds] == expected
    assert report.num_records == len(expected) == 75 and report.num_skipped == 5
    skipped = _skipped(tmp_path / "out")
    assert all(set(line) == {"file", "record", "id", "reason"} for line in skipped)
    assert [(line["file"], line["record"]) for line in skipped] == [
        (str(a), "row 4"), (str(a), "row 11"), (str(a), "row 21"), (str(a), "row 67"), (str(b), "row 3")]
    assert "unreadable CIF" in skipped[0]["reason"]
    assert "band_gap" in skipped[1]["reason"] and "nan" in skipped[1]["reason"]
    assert "empty id" in skipped[2]["reason"]
    assert skipped[3]["id"] == "a-5" and f"first seen at {a}:row 6" in skipped[3]["reason"]
    assert skipped[4]["id"] == "a-0" and f"first seen at {a}:row 1" in skipped[4]["reason"]
    manifest = Manifest.read(tmp_path / "out")
    assert manifest.num_skipped == 5
    assert [(s["records_read"], s["records_written"], s["records_skipped"]) for s in manifest.sources] == [(70, 66, 4), (10, 9, 1)]
    # the first occurrence of a duplicated id is the one kept
    assert ds[0].source == str(a) and ds[0].properties["band_gap"] == 0.0


def test_statistics_equal_numpy_on_written_records(synth_dir):
    records = list(open_dataset(synth_dir))
    stats = Manifest.read(synth_dir).statistics
    energy_per_atom = np.array([r.energy / r.natoms for r in records])
    forces = np.concatenate([r.forces.reshape(-1) for r in records])
    stress = np.concatenate([r.stress.reshape(-1) for r in records])
    natoms = np.array([r.natoms for r in records])
    for name, values in [("energy_per_atom", energy_per_atom), ("forces", forces), ("stress", stress), ("natoms", natoms)]:
        s = stats[name]
        assert s["count"] == values.size, name
        assert s["mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15), name
        assert s["std"] == pytest.approx(values.std(), rel=1e-12), name
        assert (s["min"], s["max"]) == (values.min(), values.max()), name
    numbers = np.concatenate([r.numbers for r in records])
    zs, counts = np.unique(numbers, return_counts=True)
    assert stats["element_atoms"] == {str(z): int(c) for z, c in zip(zs, counts)}
    assert stats["element_structures"] == {str(z): sum(z in r.numbers for r in records) for z in zs.tolist()}
    assert stats["num_trajectories"] == len({r.trajectory for r in records})


def test_index_holds_cell_volumes_and_older_indexes_without_them_still_open(tmp_path):
    import dataclasses

    records = list(synth_records(5, seed=2, max_atoms=8))
    molecule = dataclasses.replace(records[0], id="molecule", pbc=np.zeros(3, dtype=bool))
    convert([], tmp_path / "out", records=records + [molecule])
    ds = open_dataset(tmp_path / "out")
    assert ds.volume[:5].tolist() == pytest.approx([abs(np.linalg.det(r.cell)) for r in records], rel=1e-12)
    assert math.isnan(ds.volume[5])                       # not periodic: no volume
    assert ds.subset([4, 1]).volume.tolist() == pytest.approx([ds.volume[4], ds.volume[1]])
    index_path = tmp_path / "out" / INDEX_NAME
    with np.load(index_path) as z:
        older = {k: z[k] for k in z.files if k != "volume"}
    np.savez(index_path, **older)
    assert open_dataset(tmp_path / "out").volume is None


def test_property_statistics(sources, tmp_path):
    a, b, _ = sources
    convert([a, b], tmp_path / "out")
    gaps = np.array([r.properties["band_gap"] for r in open_dataset(tmp_path / "out")])
    s = Manifest.read(tmp_path / "out").statistics["property:band_gap"]
    assert s["count"] == 75 and s["mean"] == pytest.approx(gaps.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(gaps.std(), rel=1e-12)
    labels = Manifest.read(tmp_path / "out").labels
    assert labels == {"energy": 0, "forces": 0, "stress": 0, "properties": {"band_gap": 75}}


def test_two_workers_write_what_one_writes(sources, tmp_path):
    a, b, _ = sources
    convert([a, b], tmp_path / "w1", workers=1, shard_size=20)
    convert([a, b], tmp_path / "w2", workers=2, shard_size=20)
    d1, d2 = open_dataset(tmp_path / "w1"), open_dataset(tmp_path / "w2")
    assert len(d1) == len(d2) == 75
    assert [d1.raw(i) for i in range(75)] == [d2.raw(i) for i in range(75)]
    assert (tmp_path / "w1" / SKIPPED_NAME).read_bytes() == (tmp_path / "w2" / SKIPPED_NAME).read_bytes()
    assert (tmp_path / "w1" / INDEX_NAME).read_bytes() == (tmp_path / "w2" / INDEX_NAME).read_bytes()
    m1, m2 = Manifest.read(tmp_path / "w1"), Manifest.read(tmp_path / "w2")
    assert m1.statistics == m2.statistics and m1.sources == m2.sources
    assert [(s.num_records, s.num_atoms) for s in m1.shards] == [(s.num_records, s.num_atoms) for s in m2.shards]


def _failing(records: list[Record], after: int, exc: BaseException) -> Iterator[Record]:
    for k, record in enumerate(records):
        if k == after:
            raise exc
        yield record


@pytest.mark.parametrize("exc", [RuntimeError("generator broke"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_no_output(tmp_path, exc):
    records = list(synth_records(8, seed=1))
    with pytest.raises(type(exc)):
        convert([], tmp_path / "out", shard_size=2, records=_failing(records, 5, exc))  # 2 shards were complete
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_source_error_in_the_second_file_leaves_no_output(sources, tmp_path, workers):
    a, _, _ = sources
    bad = tmp_path / "inputs" / "no_cif_column.csv"
    bad.parent.mkdir()
    bad.write_text("material_id,structure\nx-1,whatever\n")
    with pytest.raises(SourceError, match=f"{bad}: no 'cif' column"):
        convert([a, bad], tmp_path / "out", fmt="csv-cif", workers=workers, shard_size=10)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_failure_keeps_the_previous_dataset_byte_for_byte(sources, tmp_path):
    a, b, expected = sources
    out = tmp_path / "out"
    convert([a, b], out, shard_size=30)
    before = _snapshot(out)
    with pytest.raises(SourceError, match="not empty"):
        convert([a], out)
    with pytest.raises(RuntimeError, match="generator broke"):
        convert([], out, overwrite=True, records=_failing(list(synth_records(6, seed=2)), 4, RuntimeError("generator broke")))
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == []
    assert [r.id for r in open_dataset(out)] == expected


def test_overwrite_replaces_only_on_success(sources, tmp_path):
    a, _, _ = sources
    out = tmp_path / "out"
    convert([a], out)
    old_id = Manifest.read(out).dataset_id
    records = list(synth_records(5, seed=3))
    report = convert([], out, overwrite=True, records=iter(records))
    assert report.out == out and report.num_records == 5
    manifest = Manifest.read(out)
    assert manifest.dataset_id != old_id and manifest.sources == [{"path": "generated", "format": "generated", "records_written": 5}]
    assert [r.id for r in open_dataset(out)] == [r.id for r in records]
    assert _leftovers(tmp_path) == []


def test_invalid_generated_records_are_skipped(tmp_path):
    records = list(synth_records(4, seed=0))
    records[1].energy = math.nan
    records[2].forces = np.zeros((1, 3))
    records[3].id = records[0].id
    report = convert([], tmp_path / "out", records=iter(records))
    assert report.num_records == 1 and report.num_skipped == 3
    skipped = _skipped(tmp_path / "out")
    assert [(s["file"], s["record"], s["id"]) for s in skipped] == [
        ("synth:emt", "record 1", records[1].id), ("synth:emt", "record 2", records[2].id),
        ("synth:emt", "record 3", records[0].id)]
    assert "energy contains NaN" in skipped[0]["reason"]
    assert f"forces have shape (1, 3), expected ({records[2].natoms}, 3)" in skipped[1]["reason"]
    assert "duplicate id" in skipped[2]["reason"] and "first seen at synth:emt:record 0" in skipped[2]["reason"]


def test_missing_or_empty_source_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SourceError, match=f"{empty}: file is empty"):
        convert([empty], tmp_path / "out")
    with pytest.raises(SourceError, match="no such file"):
        convert([tmp_path / "absent.csv"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
