"""benchmarks/step_balance.py: the excess formula (exact) and the JSON report on a tiny model.

No timing assertions (what the balance gains is read off the benchmark, not tested).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

step_balance = load_benchmark("step_balance")
format_report, step_excess, main = step_balance.format_report, step_balance.step_excess, step_balance.main


def test_step_excess_exact():
    # steps: max 3 and 2 (sum 5), mean 2 and 2 (sum 4)
    assert step_excess([[1.0, 2.0], [3.0, 2.0]]) == pytest.approx(0.25)
    assert step_excess([[1.0, 1.0], [1.0, 1.0]]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        step_excess([1.0, 2.0])


def test_json_report_for_each_cost_model(synth_dir: Path, capsys: pytest.CaptureFixture[str]):
    args = ["--data", str(synth_dir), "--epochs", "1", "--repeats", "1", "--json",
            "--set", "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}", "--set", "data.max_atoms=48"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    report = json.loads(out)
    assert [row["cost_model"] for row in report["rows"]] == ["packed", "atoms+edges", "measured"]
    assert report["rows"][0]["weights"] is None and report["rows"][1]["weights"] == [1.0, 1.0, 0.0]
    for row in report["rows"]:
        assert math.isfinite(row["excess"]) and row["excess"] >= 0 and row["step_ms"] > 0
    assert report["world_size"] == 2 and report["max_atoms"] == 48 and report["calibration_s"] > 0
    table = format_report(report)
    assert "measured" in table and "slowest rank excess" in table


def test_bad_arguments_are_refused(synth_dir: Path):
    with pytest.raises(SystemExit, match="world-size"):
        main(["--data", str(synth_dir), "--world-size", "1"])
    with pytest.raises(SystemExit, match="no such shard directory"):
        main(["--data", str(synth_dir / "missing")])
