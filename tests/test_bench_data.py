"""``matforge bench data``: the JSON report's keys and that every rate is a positive number.

No timing assertions (speed targets are read off the benchmark, not tested).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


from matforge.cli.main import main
from matforge.datasets.convert import convert

FIXTURE = Path(__file__).parent / "fixtures" / "perov5" / "val.csv"

RATE_KEYS = [
    "convert_records_per_s", "convert_atoms_per_s",
    "read_records_per_s", "read_atoms_per_s",
    "loader_records_per_s", "loader_atoms_per_s",
    "loader_structures_per_s_per_worker", "loader_atoms_per_s_per_worker",
]


def _bench_json(capsys, *args: str) -> dict:
    assert main(["bench", "data", *args, "--json", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1  # one JSON object, nothing else on stdout
    return json.loads(out)


def _positive(report: dict, keys: list[str]) -> None:
    for key in keys:
        value = report[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key


def test_json_report_on_converted_rows(tmp_path, capsys):
    out = tmp_path / "perov5"
    convert([FIXTURE.resolve()], out)
    report = _bench_json(capsys, str(out), "--cutoff", "8", "--max-atoms", "10")
    _positive(report, RATE_KEYS)
    assert report["convert_mode"] == "source"  # the fixture CSV is still there: parsed again
    assert report["records"] == 3 and report["atoms"] == 15
    assert report["cutoff"] == 8.0 and report["max_neighbors"] is None and report["max_atoms"] == 10
    assert report["loader_structures_per_s_per_worker"] == report["loader_records_per_s"]
    assert report["loader_edges_per_structure"] > 100  # 5-atom cells at 8 Å: hundreds of edges
    assert report["stages"]["loader"]["batches"] == 2  # 5 + 5 atoms, then 5
    assert report["stages"]["convert"]["records"] == 3
    assert "dataloader_structures_per_s" not in report


def test_rewrite_mode_workers_and_max_neighbors(synth_dir, capsys):
    """A generated dataset has no source file to parse: convert re-writes decoded records."""
    report = _bench_json(capsys, str(synth_dir), "--records", "12", "--workers", "1", "--cutoff", "4",
                         "--max-neighbors", "6")
    _positive(report, RATE_KEYS + ["dataloader_structures_per_s", "dataloader_records_per_s"])
    assert report["convert_mode"] == "rewrite"
    assert report["records"] == 12 and report["dataloader_workers"] == 1
    assert report["stages"]["dataloader"]["records"] == 12
    assert report["loader_edges_per_structure"] <= 6 * report["atoms"] / report["records"]  # k = 6 per atom


def test_table_output(synth_dir, tmp_path, capsys):
    docs = tmp_path / "benchmarks.md"
    assert main(["bench", "data", str(synth_dir), "--records", "4", "--skip-convert", "--repeats", "1",
                 "--docs", str(docs)]) == 0
    out = capsys.readouterr().out
    written = docs.read_text()
    assert "<!-- matforge bench data -->" in written and out.strip() in written  # the printed table, verbatim
    assert "read (LMDB get + decode)" in out and "read+graph+collate, 1 worker" in out
    assert "convert" not in out.split("stage")[1]
    assert "loader_structures_per_s_per_worker" in out


def test_missing_directory_is_a_clean_error(tmp_path, capsys):
    assert main(["bench", "data", str(tmp_path / "nope"), "--json"]) == 2
    assert "nope" in capsys.readouterr().err
