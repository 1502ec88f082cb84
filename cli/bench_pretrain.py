"""``matforge bench pretrain``: data-parallel scaling of the real pre-training, and its start-up time.

Each run is the real command, ``matforge pretrain --config CONFIG <overrides> --no-export``, in a
child process (a fresh Ray instance per run: the workers' thread variables are fixed when Ray
starts), on the same data:

* data: ``--data DIR`` (a shard directory; all of it trains), or else EMT-labelled structures
  generated once into a temporary directory (``--structures``, the quick start's generator);
  no validation set (validation is not what is measured);
* config: ``--config`` (default ``quickstart``: PaiNN, energy + forces + stress) with
  ``train.max_steps = --steps``, one logging window per ``--log-every`` steps, evaluation and the
  checkpoint only at the last step, and the SAME per-worker batch (``data.max_atoms``) for every
  worker count: the global batch grows with the workers (data-parallel scaling);
* runs: for each worker count W of ``--workers-list``, each ``threads_per_worker`` T of
  ``--threads`` (``auto``: every T with W·T ≤ the machine's cores; ``scaling.cpus_per_worker = T``)
  and each number L of DataLoader processes per worker of ``--loader-workers`` (``auto``: 0 and 1;
  with L = 0 graphs are built in the training process, with L = 1 in a process beside it, which
  overlaps with training only if a core is free). The whole plan is run ``--repeats`` times, round
  robin, so that a change of load on a shared machine hits every setting; each setting keeps its
  best repeat.

Read back from the run's TensorBoard events (rank 0 writes them; every window is all-reduced):

* throughput: ``throughput/atoms_per_s`` and ``throughput/structures_per_s`` summed over ranks,
  the median over the logging windows after start-up (the first window and every window ending
  before step ``--skip-steps`` are left out);
* ``launch_to_first_step_s``: from this command starting the ``matforge pretrain`` process to
  rank 0 entering its training loop, i.e. starting step 1 (the wall time of the TensorBoard
  ``hparams`` event, written right before the loop): interpreter start-up, Ray, the workers, data,
  model, normaliser fit and DDP set-up included;
* ``launch_to_first_log_s``: the run's own ``time/launch_to_first_log_s``, from ``matforge
  pretrain`` starting to the end of its first logging window (``--log-every`` steps);
* ``first_progress_line_s``: from starting the process to its first progress line arriving here
  (the first window's end as a user sees it, through Ray's log streaming).

The machine's own ceiling (W processes running the same step without communication) is measured
beside these runs by ``benchmarks/pretrain_ceiling.py``, which calls :func:`measure` with a hook.

For each W the best setting (T, L) is kept, and ``speedup_over_1[W]`` = throughput(W) /
throughput(1), each worker count with its best setting; the speed-up at equal settings (same T and
L: data-parallel scaling proper) is reported beside it, with the best of those equal settings. The
machine is usually shared: the report records the load average before and after each run, and the
equal-setting speed-up within each repeat (runs next to each other in time), whose spread shows
how much the machine itself varies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

PROGRESS_PREFIX = "[matforge] step "


def register(sub: argparse._SubParsersAction) -> None:
    add_arguments(sub.add_parser("pretrain", help="pre-training throughput with 1, 2, ... Ray workers and the time to the first step",
                       description="Run `matforge pretrain` with each worker count on the same data and report "
                                   "atoms/s, structures/s, the speed-up over 1 worker and the start-up time."))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options (also used by ``benchmarks/pretrain_ceiling.py``)."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    p.add_argument("--workers-list", default="1,2", help="comma-separated worker counts (default 1,2; 0 = Ray "
                                                          "Train local mode, in one process)")
    p.add_argument("--threads", default="auto", help="torch threads per worker: 'auto' (every T with "
                                                     "workers × T <= cores; the best is kept) or a number")
    p.add_argument("--loader-workers", default="auto",
                   help="DataLoader processes per training worker: 'auto' (0 and 1; the best is kept) or a number")
    p.add_argument("--repeats", type=int, default=1, help="times the whole plan runs, round robin; each setting "
                                                          "keeps its best (default 1)")
    p.add_argument("--data", default=None, help="shard directory to train on (default: EMT data generated "
                                                "into a temporary directory)")
    p.add_argument("--structures", type=int, default=400, help="EMT structures to generate without --data (default 400)")
    p.add_argument("--config", default="quickstart", help="packaged config or YAML file (default quickstart)")
    p.add_argument("--max-atoms", type=int, default=None, help="atoms per batch on each worker (default: the config's)")
    p.add_argument("--log-every", type=int, default=10, help="steps per logging (throughput) window (default 10)")
    p.add_argument("--skip-steps", type=int, default=10,
                   help="windows ending before this step count as start-up (default 10; the first window always does)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run (default 900)")
    p.add_argument("--keep", default=None, help="keep the runs (and generated data) in this directory")
    p.add_argument("--docs", default=None, metavar="FILE",
                   help="also write the table into this markdown file (e.g. docs/benchmarks.md), between its markers")
    p.set_defaults(func=run)


def _int_list(flag: str, text: str, minimum: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"matforge: error: {flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise SystemExit(f"matforge: error: {flag} needs integers >= {minimum}, got {text!r}")
    return values


def thread_options(workers: int, threads: str, cores: int) -> list[int]:
    """Threads per worker to try for ``workers`` workers (``auto``: 1..cores // workers)."""
    if threads != "auto":
        return _int_list("--threads", threads, 1)
    return list(range(1, max(1, cores // max(1, workers)) + 1))


def loader_options(loader_workers: str) -> list[int]:
    """DataLoader processes per training worker to try (``auto``: 0 and 1)."""
    return [0, 1] if loader_workers == "auto" else _int_list("--loader-workers", loader_workers, 0)


def prepare_data(args: argparse.Namespace, workdir: Path) -> tuple[str, str]:
    """The training directory and where it came from ("given" or "generated EMT ...")."""
    if args.data:
        from matforge.datasets.shard_dataset import open_dataset

        if not Path(args.data).is_dir():
            raise SystemExit(f"matforge: error: {args.data}: no such shard directory")
        open_dataset(args.data)  # a clear error now rather than in every run
        return str(Path(args.data).resolve()), "given"
    from matforge.datasets.synth import write_synth

    if args.structures < 1:
        raise SystemExit(f"matforge: error: --structures must be >= 1, got {args.structures}")
    out = workdir / "emt"
    if not (out / "manifest.json").is_file():
        write_synth(out, args.structures, seed=0, command="matforge bench pretrain")
    return str(out), f"generated: {args.structures} EMT structures (matforge data synth, seed 0)"


def run_overrides(args: argparse.Namespace, data: str, storage: Path, name: str, workers: int, threads: int,
                  loader_workers: int) -> list[str]:
    """The ``matforge pretrain`` overrides of one run (see the module docstring)."""
    overrides = [
        f"data.train={data}", "data.train_split=null", "data.val=null", "data.val_split=null",
        "data.synth.structures=0", f"data.loader_workers={loader_workers}", f"train.max_steps={args.steps}",
        f"train.log_every={args.log_every}", f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}",
        f"scaling.num_workers={workers}", f"scaling.threads_per_worker={threads}",
        f"scaling.cpus_per_worker={threads}", "scaling.measure_sync_wait=true",  # the table's sync column
        f"run.storage_path={storage}", f"run.name={name}",
    ]
    if args.max_atoms is not None:
        overrides.append(f"data.max_atoms={args.max_atoms}")
    return overrides + list(args.overrides)


class Scalar(NamedTuple):
    step: int
    value: float
    wall_time: float


def read_scalars(tensorboard_dir: Path) -> dict[str, list[Scalar]]:
    """``{tag: [Scalar(step, value, wall_time), ...]}`` of the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [Scalar(e.step, float(e.value), float(e.wall_time)) for e in acc.Scalars(tag)]
            for tag in acc.Tags().get("scalars", [])}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    k = len(ordered)
    if k == 0:
        return float("nan")
    return ordered[k // 2] if k % 2 else 0.5 * (ordered[k // 2 - 1] + ordered[k // 2])


def summarise(scalars: dict[str, list[Scalar]], skip_steps: int, started: float) -> dict[str, Any]:
    """Steady-state figures of one run (module docstring); ``started``: when its process was started
    (``time.time()``)."""
    atoms = scalars.get("throughput/atoms_per_s", [])
    if not atoms:
        raise ValueError("the run logged no throughput (no logging window completed)")
    first_step = atoms[0].step
    keep = {e.step for e in atoms if e.step != first_step and e.step >= skip_steps}
    if not keep:  # a very short run: everything after the first window
        keep = {e.step for e in atoms if e.step != first_step} or {first_step}

    def steady(tag: str) -> list[float]:
        return [e.value for e in scalars.get(tag, []) if e.step in keep]

    launch = scalars.get("time/launch_to_first_log_s", [])
    loop_start = scalars.get("hparam/started", [])
    return {
        "atoms_per_s": _median(steady("throughput/atoms_per_s")),
        "structures_per_s": _median(steady("throughput/structures_per_s")),
        "data_wait_fraction": _median(steady("time/data_wait_fraction")),
        # waiting for the other ranks (several CPU workers only; NaN where not logged)
        "sync_wait_fraction": _median(steady("time/sync_wait_fraction")),
        "windows": len(keep), "first_window_step": first_step,
        "launch_to_first_step_s": loop_start[0].wall_time - started if loop_start else float("nan"),
        "launch_to_first_log_s": launch[0].value if launch else float("nan"),
        "peak_memory_mb_rank0": max((e.value for e in scalars.get("memory/peak_mb", [])), default=float("nan")),
    }


def run_once(args: argparse.Namespace, data: str, storage: Path, workers: int, threads: int, loader_workers: int,
             repeat: int) -> dict[str, Any]:
    """One ``matforge pretrain`` child process; its figures (raises SystemExit with its output on failure)."""
    name = f"bench-w{workers}-t{threads}-l{loader_workers}-r{repeat}"
    shutil.rmtree(storage / name, ignore_errors=True)  # never resume an earlier run of this name
    command = [sys.executable, "-m", "matforge.cli.main", "pretrain", "--config", args.config,
               *run_overrides(args, data, storage, name, workers, threads, loader_workers), "--no-export"]
    load_before = os.getloadavg()[0]
    tail: list[str] = []
    first_progress = None
    started = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if first_progress is None and PROGRESS_PREFIX in line:
                first_progress = time.time() - started
            tail = (tail + [line.rstrip()])[-40:]
            if time.time() - started > args.timeout:
                raise SystemExit(f"matforge: error: bench pretrain: the {workers}-worker run took longer than "
                                 f"{args.timeout:.0f} s; its last output:\n" + "\n".join(tail))
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.time() - started
    if code != 0:
        raise SystemExit(f"matforge: error: bench pretrain: `matforge pretrain` with {workers} worker(s) "
                         f"exited with {code}; its last output:\n" + "\n".join(tail))
    figures = summarise(read_scalars(storage / name / "tensorboard"), args.skip_steps, started)
    return {"workers": workers, "threads_per_worker": threads, "loader_workers": loader_workers, "repeat": repeat,
            **figures, "first_progress_line_s": first_progress if first_progress is not None else float("nan"),
            "wall_s": wall, "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}


def _setting(r: dict[str, Any]) -> tuple[int, int, int]:
    return r["workers"], r["threads_per_worker"], r["loader_workers"]


def best_runs(runs: list[dict[str, Any]]) -> tuple[dict[tuple[int, int, int], dict[str, Any]], dict[int, dict[str, Any]]]:
    """Best repeat of each setting (W, T, L), and the best setting of each worker count W."""
    per_setting: dict[tuple[int, int, int], dict[str, Any]] = {}
    for r in runs:
        key = _setting(r)
        if key not in per_setting or r["atoms_per_s"] > per_setting[key]["atoms_per_s"]:
            per_setting[key] = r
    per_workers: dict[int, dict[str, Any]] = {}
    for (w, _, _), r in per_setting.items():
        if w not in per_workers or r["atoms_per_s"] > per_workers[w]["atoms_per_s"]:
            per_workers[w] = r
    return per_setting, per_workers


AfterRepeat = Callable[[argparse.Namespace, str, list[int], int, int], list[dict[str, Any]]]


def measure(args: argparse.Namespace, after_repeat: AfterRepeat | None = None) -> dict[str, Any]:
    """All runs and the report (see the module docstring). ``after_repeat(args, data, worker_counts,
    cores, repeat)``, when given, runs after each repeat's runs; what it returns is in ``report["extra"]``."""
    from matforge.pretrain.config import ConfigError, load_config

    counts = _int_list("--workers-list", args.workers_list, 0)
    for flag, value in [("--steps", args.steps), ("--log-every", args.log_every), ("--repeats", args.repeats)]:
        if value < 1:
            raise SystemExit(f"matforge: error: {flag} must be >= 1, got {value}")
    cores = os.cpu_count() or 1
    plan = [(w, t, l) for w in counts for t in thread_options(w, args.threads, cores)
            for l in loader_options(args.loader_workers)]
    workdir = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="matforge-bench-pretrain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        data, data_origin = prepare_data(args, workdir)
        storage = workdir / "runs"
        try:  # the resolved config, to report what is held fixed (and to fail early on bad overrides)
            cfg = load_config(args.config, run_overrides(args, data, storage, "bench-check", max(counts), 1, 0))
        except ConfigError as exc:
            raise SystemExit(f"matforge: error: {exc}") from None
        runs: list[dict[str, Any]] = []
        extra: list[dict[str, Any]] = []
        for rep in range(args.repeats):
            runs += [run_once(args, data, storage, w, t, l, rep) for w, t, l in plan]
            if after_repeat is not None:
                extra += after_repeat(args, data, counts, cores, rep)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    per_setting, best = best_runs(runs)
    base = best.get(1)
    report: dict[str, Any] = {
        "config": args.config, "data": data if args.keep or args.data else None, "data_origin": data_origin,
        "model": cfg.model.name, "model_hyperparameters": dict(cfg.model.hyperparameters), "objective": cfg.objective,
        "max_atoms_per_worker": cfg.data.max_atoms, "steps": args.steps, "log_every": args.log_every,
        "skip_steps": args.skip_steps, "repeats": args.repeats, "cpu_count": cores,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "runs": runs,
        "best_settings": {str(w): {"threads_per_worker": r["threads_per_worker"], "loader_workers": r["loader_workers"],
                                   "repeat": r["repeat"]} for w, r in best.items()},
        "throughput_atoms_per_s": {str(w): r["atoms_per_s"] for w, r in best.items()},
        "throughput_structures_per_s": {str(w): r["structures_per_s"] for w, r in best.items()},
        "launch_to_first_step_s": {str(w): r["launch_to_first_step_s"] for w, r in best.items()},
        "launch_to_first_log_s": {str(w): r["launch_to_first_log_s"] for w, r in best.items()},
        "speedup_over_1": ({str(w): r["atoms_per_s"] / base["atoms_per_s"] for w, r in best.items()} if base else {}),
    }
    report["speedup_2_over_1"] = report["speedup_over_1"].get("2")
    # the same settings for 1 and 2 workers (not the fair comparison when 1 worker could use more threads)
    report["speedup_2_over_1_same_settings"] = {
        f"threads={t},loader_workers={l}": per_setting[(2, t, l)]["atoms_per_s"] / r["atoms_per_s"]
        for (w, t, l), r in per_setting.items() if w == 1 and (2, t, l) in per_setting}
    # the same comparison within each repeat: adjacent runs, so the spread shows the machine's noise
    by_run = {(*_setting(r), r["repeat"]): r["atoms_per_s"] for r in runs}
    report["speedup_2_over_1_per_repeat"] = {
        f"threads={t},loader_workers={l}": [by_run[(2, t, l, k)] / by_run[(1, t, l, k)] for k in range(args.repeats)]
        for (w, t, l) in per_setting if w == 1 and (2, t, l) in per_setting}
    report["extra"] = extra
    return report


def _fraction(value: float | None) -> str:
    """A 6-wide fraction, '-' where there is none (NaN or missing)."""
    return f"{value:6.3f}" if value is not None and value == value else f"{'-':>6s}"


def format_table(report: dict[str, Any]) -> str:
    lines = [f"matforge pretrain --config {report['config']}: {report['model']} {report['model_hyperparameters']}, "
             f"objective {report['objective']}; data {report['data_origin']}",
             f"per-worker batch data.max_atoms = {report['max_atoms_per_worker']} (the global batch grows with the "
             f"workers); {report['steps']} steps, throughput = median over windows of {report['log_every']} steps "
             f"after step {report['skip_steps']}; best of {report['repeats']} repeat(s); {report['cpu_count']} CPUs",
             "",
             f"{'workers':>7s} {'threads':>7s} {'loaders':>7s} {'atoms/s':>9s} {'structs/s':>9s} {'wait':>6s} {'sync':>6s} "
             f"{'to step 1 s':>11s} {'to 1st log s':>12s} {'load before/after':>17s}"]
    best = {w: (s["threads_per_worker"], s["loader_workers"], s["repeat"]) for w, s in report["best_settings"].items()}
    for r in report["runs"]:
        mark = " *" if best.get(str(r["workers"])) == (r["threads_per_worker"], r["loader_workers"], r["repeat"]) else ""
        lines.append(f"{r['workers']:7d} {r['threads_per_worker']:7d} {r['loader_workers']:7d} {r['atoms_per_s']:9.0f} "
                     f"{r['structures_per_s']:9.1f} {r['data_wait_fraction']:6.3f} {_fraction(r.get('sync_wait_fraction'))} "
                     f"{r['launch_to_first_step_s']:11.1f} "
                     f"{r['launch_to_first_log_s']:12.1f} {r['load_average_1min_before']:8.2f}/{r['load_average_1min_after']:.2f}{mark}")
    lines.append("(* the run kept for that worker count: its best setting and repeat; threads: torch threads per worker; loaders: DataLoader "
                 "processes per worker; wait: fraction of time waiting for data; sync: fraction of time waiting for the other "
                 "ranks at the step's all-reduces, '-' with one worker)")
    if report["speedup_over_1"]:
        lines.append("")
        for w, s in report["speedup_over_1"].items():
            if w != "1":
                lines.append(f"speed-up {w} workers over 1, each with its best setting: {s:.2f}x")
        per_repeat = report.get("speedup_2_over_1_per_repeat", {})
        for setting, s in report["speedup_2_over_1_same_settings"].items():
            lines.append(f"speed-up 2 workers over 1 at the same {setting}: {s:.2f}x")
            if len(per_repeat.get(setting, [])) > 1:
                ratios = per_repeat[setting]
                lines.append(f"  within each repeat: {', '.join(f'{x:.2f}' for x in ratios)} "
                             f"(median {_median(ratios):.2f}x)")
        same = report["speedup_2_over_1_same_settings"]
        if same:
            setting, value = max(same.items(), key=lambda item: item[1])
            lines.append(f"best speed-up of 2 workers over 1 at equal settings: {value:.3f}x at {setting}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = measure(args)
    table = format_table(report)
    print(json.dumps(report) if args.json else table)
    if args.docs:
        from matforge.training.docs_tables import printed_table_section, update_section

        update_section(args.docs, "matforge bench pretrain",
                       printed_table_section("Pre-training: 1 and 2 Ray workers (`matforge bench pretrain`)", table))
    return 0
