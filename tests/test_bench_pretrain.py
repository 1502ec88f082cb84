"""``matforge bench pretrain``: the summary of a run's TensorBoard events, the choice of the best
setting, and the command on tiny runs (Ray Train local mode in-process; 1 and 2 Ray workers in an
integration test). No timing assertions (speed targets are read off the benchmark, not tested)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from matforge.cli.bench_pretrain import (Scalar, best_runs, format_table, loader_options, read_scalars, summarise,
                                        thread_options)
from matforge.cli.main import main

ceiling = load_benchmark("pretrain_ceiling")
ceiling_summary = ceiling.ceiling_summary
TINY_MODEL = "model.hyperparameters={hidden: 8, num_interactions: 1, cutoff: 4.0}"


def _run_json(capsys, *args: str) -> dict:
    assert main(["bench", "pretrain", *args, "--json"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1  # one JSON object: the runs' own output stays in their pipes
    return json.loads(out)


def _run(workers: int, threads: int, loaders: int, atoms_per_s: float) -> dict:
    return {"workers": workers, "threads_per_worker": threads, "loader_workers": loaders, "repeat": 0,
            "atoms_per_s": atoms_per_s, "structures_per_s": atoms_per_s / 10, "data_wait_fraction": 0.05,
            "sync_wait_fraction": 0.0625 if workers > 1 else float("nan"), "launch_to_first_step_s": 15.0, "launch_to_first_log_s": 16.0, "load_average_1min_before": 1.0,
            "load_average_1min_after": 1.5}


def test_table_judges_the_target_at_the_best_equal_setting():
    report = {"config": "quickstart", "model": "painn", "model_hyperparameters": {}, "objective": "efs",
              "data_origin": "given", "max_atoms_per_worker": 256, "steps": 100, "log_every": 10, "skip_steps": 10,
              "repeats": 1, "cpu_count": 2,
              "runs": [_run(1, 1, 0, 4000.0), _run(1, 2, 0, 5000.0), _run(1, 1, 1, 4200.0),
                       _run(2, 1, 0, 7000.0), _run(2, 1, 1, 6300.0)],
              "best_settings": {"1": {"threads_per_worker": 2, "loader_workers": 0, "repeat": 0},
                                "2": {"threads_per_worker": 1, "loader_workers": 0, "repeat": 0}},
              "speedup_over_1": {"1": 1.0, "2": 1.4},
              "speedup_2_over_1_same_settings": {"threads=1,loader_workers=0": 1.75, "threads=1,loader_workers=1": 1.5}}
    report["speedup_2_over_1_per_repeat"] = {"threads=1,loader_workers=0": [1.75, 1.5, 1.6]}
    table = format_table(report)
    assert "speed-up 2 workers over 1, each with its best setting: 1.40x" in table
    assert "  within each repeat: 1.75, 1.50, 1.60 (median 1.60x)" in table
    assert "best speed-up of 2 workers over 1 at equal settings: 1.750x at threads=1,loader_workers=0" in table
    rows = {line.split()[3]: line.split() for line in table.splitlines() if line[:7].strip() in ("1", "2")}
    assert rows["7000"][6] == "0.062" and rows["4000"][6] == "-"      # sync: waiting for other ranks
    # the rows kept for each worker count are starred
    starred = [line.split()[:3] for line in table.splitlines() if line.endswith(" *")]
    assert starred == [["1", "2", "0"], ["2", "1", "0"]]


def test_ceiling_and_efficiency_within_each_repeat():
    def run(w, l, rate, rep):
        return {**_run(w, 1, l, rate), "repeat": rep}

    runs = [run(1, 0, 100.0, 0), run(2, 0, 180.0, 0), run(1, 1, 90.0, 0), run(2, 1, 150.0, 0),
            run(1, 0, 120.0, 1), run(2, 0, 180.0, 1), run(1, 1, 100.0, 1), run(2, 1, 160.0, 1)]
    ceilings = [{"workers": 2, "threads_per_worker": 1, "repeat": 1, "ceiling": 1.5},
                {"workers": 2, "threads_per_worker": 1, "repeat": 0, "ceiling": 2.0}]
    per_repeat, efficiency = ceiling_summary(runs, ceilings)
    assert per_repeat == {"workers=2,threads=1": [2.0, 1.5]}            # in repeat order
    assert efficiency["workers=2,threads=1,loader_workers=0"] == pytest.approx([0.9, 1.0])
    assert efficiency["workers=2,threads=1,loader_workers=1"] == pytest.approx([150 / 90 / 2.0, 1.6 / 1.5])
    report = {"config": "quickstart", "model": "painn", "model_hyperparameters": {}, "objective": "efs",
              "data_origin": "given", "max_atoms_per_worker": 256, "steps": 100, "log_every": 10, "skip_steps": 10,
              "repeats": 2, "cpu_count": 2, "runs": runs, "best_settings": {}, "speedup_over_1": {},
              "ceiling_per_repeat": per_repeat, "efficiency_per_repeat": efficiency}
    table = ceiling.format_ceiling(report)
    assert "machine ceiling at workers=2,threads=1 (independent processes, no communication, over one alone), " \
           "each repeat: 2.00, 1.50 (median 1.75x)" in table
    assert "Ray DDP speed-up / ceiling at workers=2,threads=1,loader_workers=0, each repeat: 0.90, 1.00 (median 0.95)" in table
    assert ceiling_summary(runs, []) == ({}, {})


def test_summary_skips_start_up_windows():
    rates = [(2, 100.0), (4, 300.0), (6, 500.0), (8, 400.0), (10, 200.0)]
    scalars = {
        "throughput/atoms_per_s": [Scalar(s, v, 1000.0 + s) for s, v in rates],
        "throughput/structures_per_s": [Scalar(s, v / 10, 1000.0 + s) for s, v in rates],
        "time/data_wait_fraction": [Scalar(s, 0.1 * k, 1000.0 + s) for k, (s, _) in enumerate(rates)],
        "time/launch_to_first_log_s": [Scalar(2, 7.5, 1002.0)],
        "hparam/started": [Scalar(0, 1.0, 1001.25)],
        "memory/peak_mb": [Scalar(2, 10.0, 0.0), Scalar(4, 30.0, 0.0), Scalar(6, 20.0, 0.0)],
    }
    out = summarise(scalars, skip_steps=5, started=995.0)
    # windows ending at steps 6, 8, 10 (the first window and step 4 < 5 are start-up)
    assert out["windows"] == 3 and out["first_window_step"] == 2
    assert out["atoms_per_s"] == 400.0 and out["structures_per_s"] == 40.0
    assert out["data_wait_fraction"] == pytest.approx(0.3)
    assert math.isnan(out["sync_wait_fraction"])       # one worker: never logged
    synced = dict(scalars, **{"time/sync_wait_fraction": [Scalar(s, 0.01 * s, 1000.0 + s) for s, _ in rates]})
    assert summarise(synced, skip_steps=5, started=995.0)["sync_wait_fraction"] == pytest.approx(0.08)
    assert out["launch_to_first_step_s"] == pytest.approx(6.25)
    assert out["launch_to_first_log_s"] == 7.5
    assert out["peak_memory_mb_rank0"] == 30.0
    # even number of windows: the mean of the middle two
    assert summarise(scalars, skip_steps=3, started=995.0)["atoms_per_s"] == pytest.approx(350.0)
    # only the first window was logged: it is all there is
    short = summarise({"throughput/atoms_per_s": [Scalar(2, 100.0, 0.0)]}, skip_steps=5, started=0.0)
    assert short["atoms_per_s"] == 100.0 and math.isnan(short["launch_to_first_step_s"])
    with pytest.raises(ValueError, match="no throughput"):
        summarise({}, skip_steps=5, started=0.0)


def test_best_setting_per_worker_count_and_options():
    def run(w, t, l, rate, rep=0):
        return {"workers": w, "threads_per_worker": t, "loader_workers": l, "atoms_per_s": rate, "repeat": rep}

    runs = [run(1, 1, 0, 100.0), run(1, 2, 0, 150.0), run(2, 1, 0, 170.0), run(1, 2, 0, 160.0, rep=1),
            run(2, 1, 1, 120.0)]
    per_setting, per_workers = best_runs(runs)
    assert per_setting[(1, 2, 0)]["repeat"] == 1  # the best repeat of a setting
    assert per_workers[1]["atoms_per_s"] == 160.0 and per_workers[2]["atoms_per_s"] == 170.0
    assert thread_options(1, "auto", 2) == [1, 2] and thread_options(2, "auto", 2) == [1]
    assert thread_options(4, "auto", 2) == [1] and thread_options(0, "auto", 4) == [1, 2, 3, 4]
    assert thread_options(2, "3", 2) == [3]
    assert loader_options("auto") == [0, 1] and loader_options("2") == [2]
    with pytest.raises(SystemExit, match="--threads needs integers >= 1"):
        thread_options(1, "0", 2)


def test_local_mode_run_reports_the_json_keys(tmp_path, capsys):
    """Ray Train local mode (``scaling.num_workers=0``): one real ``matforge pretrain`` process."""
    keep = tmp_path / "bench"
    report = _run_json(capsys, "--workers-list", "0", "--threads", "1", "--loader-workers", "0", "--steps", "6",
                       "--log-every", "2", "--skip-steps", "3", "--structures", "24", "--set", TINY_MODEL,
                       "--set", "data.max_atoms=48", "--keep", str(keep))
    assert report["max_atoms_per_worker"] == 48 and report["model"] == "painn" and report["objective"] == "efs"
    (run,) = report["runs"]
    assert (run["workers"], run["threads_per_worker"], run["loader_workers"]) == (0, 1, 0)
    assert run["windows"] == 2 and run["first_window_step"] == 2  # windows ending at steps 4 and 6
    for key in ("throughput_atoms_per_s", "throughput_structures_per_s", "launch_to_first_step_s", "launch_to_first_log_s"):
        value = report[key]["0"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    # the loop starts before the first window ends; both after the process started
    assert 0 < report["launch_to_first_step_s"]["0"] < run["first_progress_line_s"]
    assert report["speedup_over_1"] == {} and report["speedup_2_over_1"] is None
    assert report["extra"] == []
    # the run is the real one: its TensorBoard events are there, with the logged steps
    events = read_scalars(keep / "runs" / "bench-w0-t1-l0-r0" / "tensorboard")
    assert [e.step for e in events["throughput/atoms_per_s"]] == [2, 4, 6]
    assert (keep / "emt" / "manifest.json").is_file()


def test_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="no such shard directory"):
        main(["bench", "pretrain", "--data", str(tmp_path / "nope"), "--workers-list", "0"])
    with pytest.raises(SystemExit, match="--workers-list needs integers >= 0"):
        main(["bench", "pretrain", "--workers-list", "-1"])
    with pytest.raises(SystemExit, match="model.hyperparameters"):
        main(["bench", "pretrain", "--workers-list", "0", "--structures", "8", "--set", "model.hyperparameters={width: 3}"])


@pytest.mark.integration
def test_one_and_two_ray_workers(synth_dir: Path, capsys):
    """Two real Ray runs (1 and 2 gloo workers, local Ray) on the same data: the speed-up is reported;
    run by benchmarks/pretrain_ceiling.py, which adds the machine's own ceiling after the runs."""
    assert ceiling.main(["--json", "--workers-list", "1,2", "--threads", "1", "--loader-workers", "0", "--steps", "4",
                         "--log-every", "1", "--skip-steps", "2", "--data", str(synth_dir), "--set", TINY_MODEL,
                         "--set", "data.max_atoms=32"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["workers"], r["threads_per_worker"]) for r in report["runs"]] == [(1, 1), (2, 1)]
    assert set(report["throughput_atoms_per_s"]) == {"1", "2"}
    speedup = report["speedup_2_over_1"]
    assert speedup == pytest.approx(report["throughput_atoms_per_s"]["2"] / report["throughput_atoms_per_s"]["1"])
    assert report["speedup_2_over_1_same_settings"] == {"threads=1,loader_workers=0": speedup}
    assert report["speedup_2_over_1_per_repeat"] == {"threads=1,loader_workers=0": [speedup]}
    assert all(report["launch_to_first_step_s"][w] > 0 for w in ("1", "2"))
    assert report["data_origin"] == "given"
    # the machine's own ceiling beside it: 1 process alone (before and after), 2 at once, same step
    (found,) = report["ceiling"]
    assert (found["workers"], found["threads_per_worker"], found["processes"]) == (2, 1, 2)
    assert len(found["alone_atoms_per_s"]) == 2 and len(found["together_atoms_per_s"]) == 2
    assert found["ceiling"] == pytest.approx(sum(found["together_atoms_per_s"]) / (sum(found["alone_atoms_per_s"]) / 2))
    assert report["ceiling_per_repeat"] == {"workers=2,threads=1": [found["ceiling"]]}
    assert report["efficiency_per_repeat"]["workers=2,threads=1,loader_workers=0"] == [
        pytest.approx(speedup / found["ceiling"])]
