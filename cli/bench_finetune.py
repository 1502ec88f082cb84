"""``matforge bench finetune``: the fine-tuning benchmark grid (backbones × tasks × folds × sizes ×
strategies × seeds), resumable and parallel, with results.csv, summary.md and plots.

See :mod:`matforge.finetune.harness` (grid, resume, files), :mod:`matforge.finetune.tasks` (task
registry, data root, download addresses and checksums), :mod:`matforge.finetune.folds` (the Matbench
protocol) and :mod:`matforge.finetune.report` (the table).
"""

from __future__ import annotations

import argparse
import shlex


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tuning benchmark: backbones x tasks x folds x sizes x strategies x seeds",
        description="Run a fine-tuning benchmark grid (resumable: finished cells are not re-run) and write "
                    "DIR/results.csv, DIR/summary.md and DIR/plots/*.png.")
    p.add_argument("--backbones", help="comma-separated: released names, backbone dirs, CGCNN .pth.tar; `none` = "
                                       "scratch copy of the first one's architecture, `none:ARCH` names one")
    p.add_argument("--tasks", help="comma-separated task names (see --list-tasks), matbench:PATH or PATH.json.gz")
    p.add_argument("--out", help="output directory (re-running with the same DIR resumes)")
    p.add_argument("--folds", default=None,
                   help="N = the first N folds of each task's protocol (Matbench: 5), or a list 0,2,4 (default: all)")
    p.add_argument("--train-sizes", default=None,
                   help="comma-separated training sizes, `all` = the whole training part (default: each task's own)")
    p.add_argument("--strategies", default="full,freeze:1,freeze:2,freeze:3",
                   help="comma-separated: full, freeze:K, probe, lrdecay:F (default full,freeze:1,freeze:2,freeze:3)")
    p.add_argument("--seeds", default="1", help="N = seeds 0..N-1, or a list 0,3 (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes, 1 thread each (default 1)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the task data (default: $MATFORGE_DATA_ROOT, else ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="where converted data is cached (default: the API's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per cell (default: the fine-tuning API's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the API's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the API's)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: the API's)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation carved from each training fold, for early stopping (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="test fraction of random_split tasks (default: the task's, 0.1)")
    p.add_argument("--docs", default=None, metavar="FILE",
                   help="also refresh each task's table section in FILE (e.g. docs/benchmarks.md)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list-tasks", action="store_true", help="list the task registry and exit")
    p.set_defaults(func=run)


def _ints_or_count(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    text = text.strip()
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    return int(text)


def _sizes(text: str | None) -> list[int | None] | None:
    if text is None:
        return None
    return [None if x.strip().lower() == "all" else int(x) for x in text.split(",") if x.strip()]


def _split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def command_line(args: argparse.Namespace) -> str:
    """The canonical command of this run (for summary.md and the docs)."""
    parts = ["matforge", "bench", "finetune", "--backbones", args.backbones, "--tasks", args.tasks]
    for flag, value in (("--folds", args.folds), ("--train-sizes", args.train_sizes),
                        ("--strategies", args.strategies), ("--seeds", args.seeds), ("--jobs", args.jobs),
                        ("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--lr", args.lr),
                        ("--patience", args.patience), ("--test-fraction", args.test_fraction)):
        if value is not None:
            parts += [flag, str(value)]
    if args.val_fraction != 0.1:
        parts += ["--val-fraction", str(args.val_fraction)]
    parts += ["--out", args.out]
    return shlex.join(parts)


def list_tasks() -> None:
    from matforge.finetune.tasks import TASKS, default_data_root

    root = default_data_root()
    print(f"data root: {root or '(none found: set --data-root or $MATFORGE_DATA_ROOT)'}")
    for task in TASKS.values():
        try:
            source, files, _ = task.resolve(root)
            where = ", ".join(str(f) for f in files)
        except FileNotFoundError:
            source, where = task.sources[0], "not found: " + (task.sources[0].url or "?")
        print(f"{task.name:24s} {task.protocol:15s} {task.units:14s} target {source.target!r} ({source.format}); "
              f"{where}")


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        list_tasks()
        return 0
    missing = [f for f, v in (("--backbones", args.backbones), ("--tasks", args.tasks), ("--out", args.out)) if not v]
    if missing:
        print(f"matforge bench finetune: error: {', '.join(missing)} required")
        return 2
    from pathlib import Path

    from matforge.finetune.bench_docs import write_docs
    from matforge.training.docs_tables import machine_description, today
    from matforge.finetune.harness import BenchError, BenchSettings, run_bench
    from matforge.finetune.report import write_report
    from matforge.finetune.tasks import default_data_root

    settings = BenchSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction, jobs=max(1, args.jobs),
                             data_root=default_data_root(args.data_root), cache_dir=args.cache_dir)
    command = command_line(args)
    machine = machine_description()
    info = {"command": command, "machine": machine, "date": today(), "jobs": settings.jobs}
    try:
        result = run_bench(backbones=_split(args.backbones), tasks=_split(args.tasks),
                           strategies=_split(args.strategies), folds=_ints_or_count(args.folds),
                           train_sizes=_sizes(args.train_sizes), seeds=_ints_or_count(args.seeds) or 1,
                           out=args.out, settings=settings, info=info)
    except (BenchError, FileNotFoundError, ValueError) as exc:
        print(f"matforge bench finetune: error: {exc}")
        return 2
    written = write_report(args.out, plots=not args.no_plots)
    if args.docs:
        from matforge.finetune.report import load_bench

        rows, bench = load_bench(args.out)
        written.append(write_docs(args.docs, rows, bench, command=command, machine=machine))
    out = Path(args.out)
    print(f"cells: {result.ran} run, {result.reused} reused, {result.failed} failed")
    print(f"results  {out / 'results.csv'}")
    for path in written:
        print(f"wrote    {path}")
    return 1 if result.failed else 0
