"""benchmarks/gpu_summary.py: the GPU run's table from TensorBoard files, nvidia-smi samples and run bounds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_summary.py"


@pytest.fixture(scope="module")
def summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(runs: Path, name: str, atoms_per_s: list[float], peak_mb: list[float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(runs / name / "tensorboard"))
    for k, (rate, peak) in enumerate(zip(atoms_per_s, peak_mb)):
        step = 20 * (k + 1)
        writer.add_scalar("throughput/atoms_per_s", rate, step)
        writer.add_scalar("throughput/structures_per_s", rate / 10, step)
        writer.add_scalar("memory/peak_mb", peak, step)
    writer.add_scalar("time/launch_to_first_log_s", 17.3, 20)
    writer.add_scalar("val/energy_per_atom_mae", 0.0123, 20 * len(atoms_per_s))
    writer.add_scalar("val/forces_mae", 0.0456, 20 * len(atoms_per_s))
    writer.add_scalar("val/stress_mae", 0.00078, 20 * len(atoms_per_s))
    writer.close()


def test_table_figures(summary, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    # steps 20..160: the second half (step > 80) holds 5000, 7000, 9000, 11000 -> median 8000
    _write_run(runs, "efs_512", [100, 200, 300, 400, 5000, 7000, 9000, 11000], [10, 20, 30, 40, 50, 60, 70, 55])
    _write_run(runs, "efs_4096", [1000] * 4, [900.0] * 4)
    # nvidia-smi lines 0-1 before the first step, 2-4 during run 1, 5-6 during run 2
    (out / "smi.csv").write_text("0, 500\n5, 600\n60, 1500\n80, 1700\n100, 1600\n40, 2000\nbad, line\n")
    (out / "runs.tsv").write_text("max_atoms\tsmi_first_step\tsmi_end\texit\n512\t2\t5\t0\n4096\t5\t7\t1\n")
    (out / "ddp_step.txt").write_text("process group backend: nccl\nddp gpu check: ok\n")
    assert summary.main(out, runs) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[1].split()
    assert first[:8] == ["512", "8,000", "800", "70", "1,700", "80", "17.3", "0.0123"]
    assert first[8:] == ["0.0456", "0.00078", "0"]
    second = lines[2].split()
    # run 2: the median over step > 40 of [1000]*4; one readable smi line (40 %, 2000 MiB); exit 1
    assert second[:6] == ["4096", "1,000", "100", "900", "2,000", "40"] and second[-1] == "1"
    assert lines[-1] == "ddp gpu check: ok"


def test_missing_samples_and_check_read_as_nan(summary, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    _write_run(runs, "efs_512", [100, 200], [10, 20])
    (out / "smi.csv").write_text("")
    (out / "runs.tsv").write_text("max_atoms\tsmi_first_step\tsmi_end\texit\n512\t0\t0\t0\n")
    assert summary.main(out, runs) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[4:6] == ["nan", "nan"] and lines[1].split()[6] == "17.3"
    assert lines[-1] == "ddp gpu check: not run"
