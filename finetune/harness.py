"""Running a fine-tuning benchmark grid: prepare data and folds, run cells in parallel, resume.

A grid is backbone × task × fold × training size × strategy × seed (:mod:`.bench_grid`: cells,
keys, the scratch baseline); each cell is one fine-tuning run (:func:`matforge.finetune.api.finetune`
by default; the runner is injectable). Files are written by :mod:`.bench_results`.

Layout of ``OUT/``::

    results.csv                 one row per finished or failed cell of this grid (RESULT_COLUMNS)
    bench.json                  the tasks (data files, sha256, units, protocol) and the settings
    splits/<task>/fold<k>.json  record ids of each fold's test, validation and nested training order
    cells/<key>/metrics.json    a finished cell: its key, settings (+ fingerprint) and metrics
    cells/<key>/error.json      a failed cell: the error and traceback (re-run on the next call)
    cells/<key>/run/            the fine-tuning run's own output (predictions.csv, card, ...)

Resuming: a cell whose ``metrics.json`` exists is read, not re-run; a failed cell is run again. A
finished cell whose settings (data, split, backbone, hyper-parameters) differ from this call's is
refused before anything runs: that is another experiment, for another ``--out``.

Parallelism: ``jobs`` worker processes (``ProcessPoolExecutor``, spawn context, at most ``jobs``
cells in flight), each cell with ``threads=1`` so that ``jobs`` cells share the cores; ``jobs=1``
runs in this process with the API's default threads. A cell's exception is recorded and the grid
goes on; a worker that dies (out of memory) fails the cells in flight and a new pool continues.
``results.csv`` is rewritten after every finished cell (``.partial`` + ``os.replace``).

The data of each task is converted once, in this process, before any cell runs (into the
content-keyed cache of :func:`matforge.finetune.data_source.prepare_data`); cells get the shard
directory and explicit record-id splits (:mod:`matforge.finetune.folds`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from matforge.finetune.bench_grid import (DEFAULT_STRATEGIES, SCRATCH, SCRATCH_STRATEGY, STRATEGY_ORDER,
                                          BackboneSpec, BenchError, Cell, backbone_slug, expand_grid,
                                          parse_backbones, scratch_for, size_label, slug)
from matforge.finetune.bench_results import (RESULT_COLUMNS, headline, read_results_csv, result_row,
                                             write_json_atomic, write_results_csv, write_text_atomic)
from matforge.finetune.bench_data import Loader, TaskData, load_task_data
from matforge.finetune.folds import DEFAULT_VAL_FRACTION, fold_numbers, make_folds
from matforge.finetune.tasks import Task

__all__ = ["run_bench", "run_grid", "build_specs", "load_task_data", "run_with_finetune", "BenchSettings",
           "BenchResult", "CellSpec", "TaskData", "Runner", "Loader",
           # re-exported from bench_grid / bench_results
           "BackboneSpec", "BenchError", "Cell", "DEFAULT_STRATEGIES", "RESULT_COLUMNS", "SCRATCH",
           "SCRATCH_STRATEGY", "STRATEGY_ORDER", "backbone_slug", "expand_grid", "parse_backbones",
           "read_results_csv", "result_row", "scratch_for", "size_label", "slug", "write_json_atomic",
           "write_results_csv", "write_text_atomic"]


# -- the cell spec and the runners -----------------------------------------------------------------

@dataclass(frozen=True)
class CellSpec:
    """Everything one cell's run needs; plain data, so it crosses to a worker process."""

    cell: Cell
    backbone: str
    arch: str | None
    data: str
    target: str
    kind: str
    pooling: str
    split: dict[str, list[str]]
    out: str
    hyper: dict[str, Any]
    threads: int | None
    units: str


Runner = Callable[[CellSpec], dict]


def run_with_finetune(spec: CellSpec) -> dict:
    """The default runner: one :func:`matforge.finetune.api.finetune` call."""
    from matforge.finetune.api import finetune

    kwargs: dict[str, Any] = {k: v for k, v in spec.hyper.items() if v is not None}
    return finetune(spec.backbone, spec.data, spec.target, spec.out, arch=spec.arch, task=spec.kind,
                    pooling=spec.pooling, units=spec.units, strategy=spec.cell.strategy, split=spec.split,
                    seed=spec.cell.seed, threads=spec.threads, progress=False, tensorboard=False, **kwargs)


run_with_finetune.warm_modules = (  # type: ignore[attr-defined]
    "torch", "torch_geometric", "matforge.finetune.api", "matforge.datasets.graphs", "matforge.finetune.graph_store",
    "matforge.finetune.model_setup", "matforge.finetune.trainer", "matforge.finetune.outputs")
"""Modules a process imports before its first cell, so that no cell's wall time includes importing
them (torch_geometric alone takes seconds); a runner without ``warm_modules`` gets none."""


def warm_up(modules: Sequence[str]) -> None:
    """Import ``modules`` (a worker's initializer, and once in-process before ``jobs=1`` cells); a
    module that is not there is skipped: warming up only moves time out of the first cell."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _execute(runner: Runner, spec: CellSpec) -> tuple[dict | None, str | None, float]:
    """Run one cell, catching its exception (the worker must not die with it)."""
    t0 = time.perf_counter()
    try:
        metrics = runner(spec)
        if not isinstance(metrics, dict):
            raise TypeError(f"the runner returned {type(metrics).__name__}, not a dict of metrics")
        return metrics, None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
        text = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc()
        return None, text, time.perf_counter() - t0


# -- the grid --------------------------------------------------------------------------------------

@dataclass
class BenchSettings:
    """Settings of a grid run that are not grid axes. ``None`` hyper-parameters = the API's defaults."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    patience: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float | None = None
    jobs: int = 1
    data_root: Path | None = None
    cache_dir: str | None = None

    def hyper(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "patience": self.patience}


def _ids_digest(split: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        h.update(name.encode() + b"\0" + "\0".join(split[name]).encode() + b"\1")
    return h.hexdigest()[:16]


def cell_settings(spec: CellSpec, dataset_id: str) -> dict[str, Any]:
    """What makes a cell's result what it is (compared when resuming)."""
    return {"backbone": spec.backbone, "arch": spec.arch, "data": dataset_id or spec.data, "target": spec.target,
            "kind": spec.kind, "pooling": spec.pooling, "strategy": spec.cell.strategy, "seed": spec.cell.seed,
            "split": _ids_digest(spec.split), "hyper": {k: v for k, v in sorted(spec.hyper.items())}}


@dataclass
class BenchResult:
    rows: list[dict]
    tasks: dict[str, TaskData]
    ran: int
    reused: int
    failed: int


Progress = Callable[[str], None]


def build_specs(cells: Sequence[Cell], backbones: Sequence[BackboneSpec], data: dict[str, TaskData], out: Path,
                settings: BenchSettings) -> list[CellSpec]:
    by_label = {b.label: b for b in backbones}
    threads = 1 if settings.jobs > 1 else None
    specs = []
    for cell in cells:
        td = data[cell.task]
        split = td.splits[cell.fold]
        bb = by_label[cell.backbone]
        ids = td.ids
        specs.append(CellSpec(
            cell=cell, backbone=bb.backbone, arch=bb.arch, data=td.data, target=td.source.target if td.source else "y",
            kind=td.task.kind, pooling=td.task.pooling,
            split={"train": [ids[i] for i in split.train(cell.size)], "val": [ids[i] for i in split.val],
                   "test": [ids[i] for i in split.test]},
            out=str(out / "cells" / cell.key / "run"), hyper=settings.hyper(), threads=threads, units=td.task.units))
    return specs


def _write_splits(out: Path, td: TaskData) -> None:
    for fold, split in td.splits.items():
        write_json_atomic(out / "splits" / slug(td.task.name) / f"fold{fold}.json", {
            "task": td.task.name, "protocol": td.task.protocol, "fold": fold,
            "test": [td.ids[i] for i in split.test], "val": [td.ids[i] for i in split.val],
            "train_order": [td.ids[i] for i in split.train_order]})


def _task_info(td: TaskData) -> dict[str, Any]:
    t = td.task
    return {"name": t.name, "description": t.description, "units": t.units, "kind": t.kind, "pooling": t.pooling,
            "protocol": t.protocol, "target": td.source.target if td.source else None,
            "format": td.source.format if td.source else None, "files": td.files, "data": td.data,
            "dataset_id": td.dataset_id, "records": len(td.ids),
            "file_sha256": td.file_sha256,
            "url": td.source.url if td.source else "", "sha256": td.source.sha256 if td.source else None,
            "checksum_note": td.source.checksum_note if td.source else "",
            "source_note": td.source.note if td.source else "",
            "references": [asdict(r) for r in t.references]}


def _load_finished(path: Path, settings: dict) -> tuple[dict, list[str]]:
    """``(stored metrics.json, differences)`` of a finished cell; differences non-empty when the
    settings it was run with are not ``settings``."""
    stored = json.loads(path.read_text())
    old = stored.get("settings", {})
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    return stored, diffs


def run_grid(specs: Sequence[CellSpec], out: Path, runner: Runner, jobs: int, dataset_ids: dict[str, str],
             progress: Progress = print) -> tuple[list[dict], int, int, int]:
    """Run the cells not finished yet; returns ``(rows in grid order, ran, reused, failed)``."""
    rows: dict[str, dict] = {}
    order = [s.cell.key for s in specs]
    todo: list[CellSpec] = []
    changed: list[str] = []
    settings_of = {s.cell.key: cell_settings(s, dataset_ids.get(s.cell.task, "")) for s in specs}
    for spec in specs:
        metrics_path = out / "cells" / spec.cell.key / "metrics.json"
        if metrics_path.exists():
            stored, diffs = _load_finished(metrics_path, settings_of[spec.cell.key])
            if diffs:
                changed.append(f"{spec.cell.key} ({'; '.join(diffs)})")
                continue
            rows[spec.cell.key] = result_row(spec.cell, spec.arch, spec.units, stored.get("metrics"),
                                             stored.get("wall_s"), None)
        else:
            todo.append(spec)
    if changed:
        shown = "\n  ".join(changed[:5]) + (f"\n  ... and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise BenchError(f"{len(changed)} finished cell(s) in {out} were run with other settings:\n  {shown}\n"
                         "that is another experiment: use another --out (or delete those cells)")
    reused = len(rows)
    results_path = out / "results.csv"

    def finish(spec: CellSpec, metrics: dict | None, error: str | None, wall: float) -> None:
        cell_dir = out / "cells" / spec.cell.key
        if error is None:
            write_json_atomic(cell_dir / "metrics.json", {"key": spec.cell.key, "cell": asdict(spec.cell),
                                                          "settings": settings_of[spec.cell.key],
                                                          "wall_s": wall, "metrics": metrics})
            (cell_dir / "error.json").unlink(missing_ok=True)
        else:
            write_json_atomic(cell_dir / "error.json", {"key": spec.cell.key, "cell": asdict(spec.cell),
                                                        "wall_s": wall, "error": error})
        rows[spec.cell.key] = result_row(spec.cell, spec.arch, spec.units, metrics, wall, error)
        write_results_csv(results_path, [rows[k] for k in order if k in rows])
        done = len(rows) - reused
        what = "failed: " + error.strip().splitlines()[0][:160] if error else headline(rows[spec.cell.key])
        progress(f"[{done}/{len(todo)}] {spec.cell.task} {spec.cell.backbone} fold {spec.cell.fold} "
                 f"n={size_label(spec.cell.size)} {spec.cell.strategy} seed {spec.cell.seed}: {what} ({wall:.1f} s)")

    def prepare(spec: CellSpec) -> None:
        run_dir = Path(spec.out)
        if run_dir.exists():  # left by an attempt that did not finish
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)

    if todo:
        progress(f"{len(todo)} cell(s) to run, {reused} finished already, {jobs} job(s)")
    write_results_csv(results_path, [rows[k] for k in order if k in rows])
    if jobs <= 1:
        warm_up(getattr(runner, "warm_modules", ()) if todo else ())
        for spec in todo:
            prepare(spec)
            finish(spec, *_execute(runner, spec))
    else:
        _run_pool(todo, runner, jobs, prepare, finish)
    failed = sum(1 for r in rows.values() if r["status"] != "ok")
    return [rows[k] for k in order if k in rows], len(todo), reused, failed


def _run_pool(todo: Sequence[CellSpec], runner: Runner, jobs: int, prepare: Callable[[CellSpec], None],
              finish: Callable[[CellSpec, dict | None, str | None, float], None]) -> None:
    """At most ``jobs`` cells in flight in spawned workers; a broken pool is replaced."""
    import multiprocessing

    queue = list(todo)
    context = multiprocessing.get_context("spawn")
    while queue:
        executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=warm_up,
                                       initargs=(tuple(getattr(runner, "warm_modules", ())),))
        in_flight: dict[Future, tuple[CellSpec, float]] = {}
        broken = False
        try:
            while queue or in_flight:
                while queue and len(in_flight) < jobs and not broken:
                    spec = queue.pop(0)
                    prepare(spec)
                    in_flight[executor.submit(_execute, runner, spec)] = (spec, time.perf_counter())
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    spec, t0 = in_flight.pop(future)
                    try:
                        finish(spec, *future.result())
                    except BrokenProcessPool:
                        broken = True
                        finish(spec, None, "BrokenProcessPool: a worker process died (out of memory?) while "
                                           "this cell was in flight", time.perf_counter() - t0)
                if broken and not in_flight:
                    break
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)


def run_bench(*, backbones: Sequence[str], tasks: Sequence[str], strategies: Sequence[str] = DEFAULT_STRATEGIES,
              folds: int | Sequence[int] | None = None, train_sizes: Sequence[int | None] | None = None,
              seeds: int | Sequence[int] = 1, out: str | os.PathLike, settings: BenchSettings | None = None,
              runner: Runner = run_with_finetune, loader: Loader = load_task_data,
              progress: Progress = print, info: dict | None = None) -> BenchResult:
    """Prepare each task's data and folds, expand the grid and run what is not finished.

    ``seeds``: a count (seeds ``0..n-1``) or the seeds. ``train_sizes``: None = each task's own
    sizes (None in a list = the whole training part). ``folds``: None = the protocol's folds, an int
    = the first N, or a list. ``info`` is stored in ``bench.json`` (the command line, say)."""
    from matforge.finetune.tasks import default_data_root, get_task, with_overrides

    settings = settings or BenchSettings()
    if settings.data_root is None:
        settings.data_root = default_data_root()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs_bb = parse_backbones(backbones)
    strategies = [s.strip() for s in strategies if s.strip()]
    if not strategies:
        raise BenchError("no strategies given")
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    task_objs: list[Task] = []
    for name in tasks:
        try:
            task_objs.append(with_overrides(get_task(name), test_fraction=settings.test_fraction))
        except KeyError as exc:
            raise BenchError(str(exc.args[0])) from None
    names = [t.name for t in task_objs]
    if len(set(names)) != len(names):
        raise BenchError(f"a task is listed twice: {names}")
    data: dict[str, TaskData] = {}
    fold_map: dict[str, list[int]] = {}
    size_map: dict[str, list[int | None]] = {}
    for task in task_objs:
        fold_map[task.name] = fold_numbers(task, folds)
        progress(f"task {task.name}: preparing data")
        td = loader(task, settings.data_root, settings.cache_dir)
        td.splits = {s.fold: s for s in make_folds(task, len(td.ids), fold_map[task.name],
                                                   val_fraction=settings.val_fraction, groups=td.groups,
                                                   test_positions=td.test_positions)}
        available = min(s.available() for s in td.splits.values())
        sizes = list(task.train_sizes) if train_sizes is None else list(train_sizes)
        too_big = [s for s in sizes if s is not None and s > available]
        if too_big:
            progress(f"task {task.name}: training size(s) {too_big} exceed the {available} training records of a "
                     "fold; those cells use all of them (train_size in results.csv says how many)")
        size_map[task.name] = sizes
        data[task.name] = td
        _write_splits(out, td)
        progress(f"task {task.name}: {len(td.ids)} records, protocol {task.protocol}, folds {fold_map[task.name]}, "
                 f"sizes {[size_label(s) for s in sizes]}")
    write_json_atomic(out / "bench.json", {"info": info or {}, "settings": {**asdict(settings), "data_root": str(
        settings.data_root) if settings.data_root else None}, "backbones": [asdict(b) for b in specs_bb],
        "strategies": strategies, "seeds": seed_list, "tasks": {n: _task_info(td) for n, td in data.items()}})
    cells = expand_grid(names, specs_bb, fold_map, size_map, strategies, seed_list)
    specs = build_specs(cells, specs_bb, data, out, settings)
    rows, ran, reused, failed = run_grid(specs, out, runner, settings.jobs,
                                         {n: td.dataset_id for n, td in data.items()}, progress)
    return BenchResult(rows, data, ran, reused, failed)
