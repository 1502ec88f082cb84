"""MPtrj reader on real DFT frames laid out as MPtrj (tests/fixtures/mptrj): ids, trajectories,
stress conversion, equilibrium flags, bad records, whole-file failures and bounded-memory streaming."""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.errors import SourceError
from matforge.datasets.readers import detect_format, make_reader
from matforge.datasets.readers.mptrj import MptrjReader
from matforge.datasets.shard_dataset import open_dataset

FIXTURES = Path(__file__).parent / "fixtures"
MPTRJ = FIXTURES / "mptrj" / "mptrj_fixture.json"
KBAR_TO_EV_PER_A3 = 0.1 / 160.21766208  # 1 kBar = 0.1 GPa; 1 eV/Å³ = 160.21766208 GPa

IDS = ["mp-135-0-0", "mp-135-0-1", "mp-135-0-2", "mp-135-0-3", "mp-129-0-0", "mp-32-0-0", "mp-32-0-1"]


def _records(path: Path = MPTRJ, **options: str) -> list:
    reader = make_reader(path, "mptrj", options)
    return [reader.to_record(item) for item in reader.items()]


def _raw() -> dict:
    return json.loads(MPTRJ.read_text())


def test_ids_trajectories_frames_and_equilibrium() -> None:
    recs = _records()
    assert [r.id for r in recs] == IDS
    assert [r.trajectory for r in recs] == ["mp-135"] * 4 + ["mp-129"] + ["mp-32"] * 2
    assert [r.frame for r in recs] == [0, 1, 2, 3, 0, 0, 1]
    # relaxed = the frame whose energy per atom is e_per_atom_relaxed: Li's ground state (last
    # frame) and the relaxed Mo cell; the strained Li cells and the Ge slabs are off-equilibrium
    assert [r.equilibrium for r in recs] == [False, False, False, True, True, False, False]
    assert [r.natoms for r in recs] == [2, 2, 2, 2, 2, 12, 12]
    assert [sorted(set(r.numbers.tolist())) for r in recs] == [[3]] * 4 + [[42]] + [[32]] * 2


def test_energy_forces_and_properties() -> None:
    recs = {r.id: r for r in _records()}
    ge = recs["mp-32-0-0"]
    assert ge.energy == -51.77864709  # corrected_total_energy, total eV (mlearn Ge training row 168)
    np.testing.assert_array_equal(ge.forces[0], [0.015709, -0.13385581, -0.16247796])
    assert ge.forces.shape == (12, 3)
    assert recs["mp-135-0-3"].energy == -3.79784039
    np.testing.assert_allclose(recs["mp-135-0-3"].positions[1], [1.7134085] * 3, atol=1e-12)
    # ef_per_atom, e_per_atom_relaxed and bandgap when not null; Ge's bandgap is null
    assert set(recs["mp-135-0-0"].properties) == {"ef_per_atom", "e_per_atom_relaxed", "bandgap"}
    assert set(ge.properties) == {"ef_per_atom", "e_per_atom_relaxed"}
    assert ge.properties["e_per_atom_relaxed"] == -4.4925244028125
    assert ge.properties["ef_per_atom"] == pytest.approx(-51.77864709 / 12 + 4.4925244028125, abs=1e-12)
    assert recs["mp-129-0-0"].properties["bandgap"] == 0.0


def test_stress_kbar_vasp_sign_becomes_ase_ev_per_a3() -> None:
    recs = {r.id: r for r in _records()}
    raw = _raw()
    for rec in recs.values():
        kbar = np.array(raw[rec.trajectory][rec.id]["stress"])
        np.testing.assert_allclose(rec.stress, -kbar * KBAR_TO_EV_PER_A3, rtol=1e-12, atol=0)
    ge = recs["mp-32-0-0"].stress
    # VASP printed xx = -4.80183087 kBar (tensile): ASE sign makes it positive
    assert ge[0, 0] == pytest.approx(4.80183087 * 0.1 / 160.21766208, rel=1e-12)
    assert ge[0, 0] == pytest.approx(0.00299707, abs=1e-8)
    assert ge[0, 1] == ge[1, 0] == pytest.approx(-0.05666478 * KBAR_TO_EV_PER_A3, rel=1e-12)
    assert ge[0, 2] == pytest.approx(0.58608074 * KBAR_TO_EV_PER_A3, rel=1e-12)
    # the Li cell compressed by 1 % pushes outwards: +3.239 kBar in VASP, negative in ASE's sign
    assert recs["mp-135-0-0"].stress[0, 0] == pytest.approx(-0.0020217, abs=1e-7)


def test_energy_option_picks_corrected_or_uncorrected(tmp_path: Path) -> None:
    data = _raw()
    frame = data["mp-129"]["mp-129-0-0"]
    frame["corrected_total_energy"] = frame["uncorrected_total_energy"] - 0.5
    path = tmp_path / "corrected.json"
    path.write_text(json.dumps(data))
    default = {r.id: r.energy for r in _records(path)}
    uncorrected = {r.id: r.energy for r in _records(path, energy="uncorrected")}
    assert default["mp-129-0-0"] == pytest.approx(-21.69715587 - 0.5, abs=1e-12)
    assert uncorrected["mp-129-0-0"] == -21.69715587
    assert {k: v for k, v in default.items() if k != "mp-129-0-0"} == {k: v for k, v in uncorrected.items() if k != "mp-129-0-0"}
    with pytest.raises(ValueError, match="energy='raw'"):
        make_reader(path, "mptrj", {"energy": "raw"})


def test_sniffing() -> None:
    assert detect_format(MPTRJ) == "mptrj"
    for other in [FIXTURES / "matbench" / "matbench_jdft2d.json.gz", FIXTURES / "mlearn" / "Li_training.json",
                  FIXTURES / "matdeeplearn" / "jdft2d.json", FIXTURES / "perov5" / "val.csv", FIXTURES / "cgcnn",
                  FIXTURES / "cgcnn" / "atom_init.json"]:
        assert not MptrjReader.sniff(other), other


def test_gzipped_copy_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "mptrj.json.gz"
    path.write_bytes(gzip.compress(MPTRJ.read_bytes()))
    assert detect_format(path) == "mptrj"
    plain, zipped = _records(), _records(path)
    assert [r.id for r in zipped] == IDS
    assert all(np.array_equal(a.stress, b.stress) and a.energy == b.energy for a, b in zip(plain, zipped))


def test_reader_survives_pickling_into_workers() -> None:
    reader = make_reader(MPTRJ, "mptrj", {"energy": "uncorrected"})
    clone = pickle.loads(pickle.dumps(reader))
    item = next(iter(reader.items()))
    assert clone.to_record(item).energy == reader.to_record(item).energy == -3.79722591


def test_round_trip_through_shards_and_manifest(tmp_path: Path) -> None:
    report = convert([MPTRJ], tmp_path / "out", workers=2)
    assert (report.num_records, report.num_skipped) == (7, 0)
    expected = {r.id: r for r in _records()}
    for rec in open_dataset(tmp_path / "out"):
        want = expected[rec.id]
        assert rec.energy == want.energy and rec.frame == want.frame and rec.trajectory == want.trajectory
        assert rec.equilibrium == want.equilibrium
        np.testing.assert_array_equal(rec.forces, want.forces)
        np.testing.assert_array_equal(rec.stress, want.stress)
        assert rec.properties == want.properties
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [source] = manifest["sources"]
    assert source["format"] == "mptrj"
    assert any("kBar" in c and "ASE sign" in c for c in source["conversions"])
    assert manifest["statistics"]["equilibrium"] == {"relaxed": 2, "off_equilibrium": 5, "unknown": 0}
    assert manifest["statistics"]["num_trajectories"] == 3


def test_bad_frames_are_skipped_with_file_record_and_reason(tmp_path: Path) -> None:
    data = _raw()
    li = data["mp-135"]
    li["mp-135-0-0"]["corrected_total_energy"] = float("nan")  # json.dumps writes a bare NaN token
    li["mp-135-0-1"]["force"] = li["mp-135-0-1"]["force"][:1]
    li["mp-135-0-2"]["structure"]["sites"][0]["species"] = [{"element": "Li", "occu": 0.5}]
    data["mp-129"]["mp-129-0-0"]["structure"]["sites"][1]["species"] = [{"element": "Md", "occu": 1}]
    ge = data["mp-32"]
    ge["mp-32-0-1"]["stress"] = ge["mp-32-0-1"]["stress"][:2]
    data["mp-9999"] = {"mp-32-0-0": copy.deepcopy(ge["mp-32-0-0"]), "mp-9999-0-1": "not a frame",
                       "mp-9999-0-2": {"structure": ge["mp-32-0-0"]["structure"], "corrected_total_energy": None}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))

    report = convert([path], tmp_path / "out")
    assert report.num_records == 2  # mp-135-0-3 and mp-32-0-0
    rows = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert all(row["file"] == str(path) for row in rows)
    assert {row["record"]: row["reason"] for row in rows} == {
        "mp-135/mp-135-0-0": "corrected_total_energy is NaN",
        "mp-135/mp-135-0-1": "forces have shape (1, 3), expected (2, 3)",
        "mp-135/mp-135-0-2": "site 0 is partially occupied (Li:0.5); matforge needs ordered structures",
        "mp-129/mp-129-0-0": "atomic number 101 outside 1..100",
        "mp-32/mp-32-0-1": "stress has shape (2, 3), expected (3, 3) kBar",
        "mp-9999/mp-32-0-0": "duplicate id 'mp-32-0-0' (first seen at " + str(path) + ":mp-32/mp-32-0-0)",
        "mp-9999/mp-9999-0-1": "frame is a str, not an object",
        "mp-9999/mp-9999-0-2": "no corrected_total_energy",
    }
    assert {r.id for r in open_dataset(tmp_path / "out")} == {"mp-135-0-3", "mp-32-0-0"}


def _staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name or p.name.startswith("."))


def test_truncated_file_streams_its_first_frames_then_fails_cleanly(tmp_path: Path) -> None:
    text = MPTRJ.read_text()
    path = tmp_path / "cut.json"
    path.write_text(text[: int(len(text) * 0.6)])  # cut inside the Ge frames
    reader = make_reader(path, "mptrj")
    seen = []
    with pytest.raises(SourceError, match="truncated JSON") as info:
        for item in reader.items():
            seen.append(item.locator)
    assert info.value.path == str(path)
    assert seen[:5] == ["mp-135/mp-135-0-0", "mp-135/mp-135-0-1", "mp-135/mp-135-0-2", "mp-135/mp-135-0-3",
                        "mp-129/mp-129-0-0"]
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="truncated JSON"):
        convert([path], out, fmt="mptrj")
    assert not out.exists()
    assert _staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("   \n", "file is empty"),
    ("this is not JSON", "not an MPtrj file"),
    ('{"mp-1": {"mp-1-0-0": {"structure": ', "truncated JSON"),
    ('{"mp-1": {"mp-1-0-0": {"structure": nope}}}', "invalid JSON"),
    ("[1, 2, 3]", "top level is not a JSON object"),
    ("{}", "holds no materials"),
    ('{"mp-1": [1, 2]}', "not an object of frames"),
])
def test_whole_file_failures_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mptrj.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message) as info:
        convert([path], tmp_path / "out", fmt="mptrj")
    assert info.value.path == str(path)
    assert not (tmp_path / "out").exists() and _staging_leftovers(tmp_path) == []


def _generated_mptrj(path: Path, materials: int) -> Path:
    """``materials`` copies of the four Li frames under new ids, written as text (never held whole)."""
    frame_texts = [json.dumps(frame) for frame in _raw()["mp-135"].values()]
    with open(path, "w") as f:
        f.write("{")
        for m in range(materials):
            f.write(("," if m else "") + f'"mp-{m}": {{')
            f.write(", ".join(f'"mp-{m}-0-{k}": {t}' for k, t in enumerate(frame_texts)))
            f.write("}")
        f.write("}")
    return path


def _peak_bytes_while_streaming(path: Path) -> tuple[int, int, object]:
    reader = make_reader(path, "mptrj")
    tracemalloc.start()
    try:
        count, last = 0, None
        for item in reader.items():
            count, last = count + 1, item
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, count, reader.to_record(last)


def test_streaming_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Peak traced memory while streaming a 6 MB file equals that of a 0.75 MB one (one material
    and the parser's 64 KB blocks), and stays far below the larger file's size."""
    small = _generated_mptrj(tmp_path / "small.json", 200)
    big = _generated_mptrj(tmp_path / "big.json", 1600)
    peak_small, n_small, _ = _peak_bytes_while_streaming(small)
    peak_big, n_big, last = _peak_bytes_while_streaming(big)
    assert (n_small, n_big) == (800, 6400)
    assert last.id == "mp-1599-0-3" and last.trajectory == "mp-1599" and last.energy == -3.79784039
    size = big.stat().st_size
    assert size > 5.5e6
    assert peak_big < 1.3 * peak_small + 64_000, (peak_small, peak_big)
    assert peak_big < size / 5, f"peak {peak_big / 1e6:.2f} MB for a {size / 1e6:.1f} MB file"


def test_non_finite_tokens_inside_strings_are_left_alone(tmp_path: Path) -> None:
    """Only bare NaN/Infinity values are rewritten; the formula 'NaN' (sodium nitride) and text
    that merely contains the word stay as they are."""
    data = _raw()
    frame = data["mp-129"]["mp-129-0-0"]
    frame["mp_id"] = "NaN"
    frame["structure"]["sites"][0]["label"] = "a: NaN"
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(data, indent=2))
    reader = make_reader(path, "mptrj")
    payloads = {item.locator: item.payload[3] for item in reader.items()}
    assert payloads["mp-129/mp-129-0-0"]["mp_id"] == "NaN"
    assert payloads["mp-129/mp-129-0-0"]["structure"]["sites"][0]["label"] == "a: NaN"
