"""``matforge data leakage CORPUS_DIR [CORPUS_DIR ...] --tasks T1,T2 [--data-root DIR] [--json FILE]
[--drop-to OUT_DIR]``: which corpus records are copies of the tasks' structures."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leakage",
        help="find corpus records that match downstream tasks' structures (pymatgen StructureMatcher)",
        description="For reduced formulas present in both a corpus and a task's data, compare the structures "
                    "with pymatgen's StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5, primitive cells, "
                    "volumes scaled: rattled and strained copies match). Prints one line per task; "
                    "--drop-to writes the corpus without the matched records.",
    )
    p.add_argument("corpora", nargs="+", metavar="CORPUS_DIR", help="shard directories (matforge data convert/synth)")
    p.add_argument("--tasks", required=True, help="comma-separated fine-tuning task names (see matforge bench finetune)")
    p.add_argument("--data-root", default=None, help="folder holding the tasks' files (default: $MATFORGE_DATA_ROOT, "
                                                     "else ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="conversion cache of the tasks' files (default ~/.cache/matforge)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report (every match) as JSON")
    p.add_argument("--drop-to", default=None, metavar="OUT_DIR",
                   help="write the corpora without the matched records as one dataset (ids in leakage_dropped.json)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR once the new dataset is complete")
    p.add_argument("--supercell", action="store_true",
                   help="also match supercells whose primitive cell is lost to rattling (StructureMatcher "
                        "attempt_supercell; much slower)")
    p.set_defaults(func=run)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"matforge: error: {message}")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _print_table(report) -> None:
    records = sum(c.num_records for c in report.corpora)
    s = report.settings
    print(f"leakage check: {records} corpus records in {len(report.corpora)} dataset(s); StructureMatcher "
          f"ltol={s.ltol:g} stol={s.stol:g} angle_tol={s.angle_tol:g} primitive_cell={s.primitive_cell} "
          f"scale={s.scale} attempt_supercell={s.attempt_supercell}")
    print(f"{'task':<24s} {'downstream':>10s} {'shared formulas':>15s} {'corpus matched':>14s} "
          f"{'downstream matched':>18s}")
    for t in report.tasks:
        print(f"{t.task:<24s} {t.downstream_structures:>10d} {t.shared_formulas:>15d} "
              f"{t.corpus_records_matched:>14d} {t.downstream_matched:>18d}")
    skipped = sum(c.records_skipped for c in report.corpora)
    print(f"overlap: {report.num_corpus_records_matched} corpus record(s) match a downstream structure "
          f"({sum(c.records_compared for c in report.corpora)} records shared a formula, "
          f"{report.pairs_compared} pairs compared, {skipped} without a periodic cell skipped; "
          f"{report.seconds:.1f} s)")


def run(args: argparse.Namespace) -> int:
    from matforge.datasets.errors import DatasetError
    from matforge.datasets.leakage import MatcherSettings, find_leakage
    from matforge.datasets.shard_dataset import open_dataset

    if len({Path(c).resolve() for c in args.corpora}) != len(args.corpora):
        raise _fail("a CORPUS_DIR is given twice")
    for corpus in args.corpora:
        if not Path(corpus).is_dir():
            raise _fail(f"{corpus}: no such directory")
        try:
            open_dataset(corpus)
        except DatasetError as exc:
            raise _fail(str(exc)) from None
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise _fail(f"{args.json}: its folder does not exist")

    from matforge.finetune.leakage_tasks import TaskLookupError, task_sets

    try:
        sets = task_sets(args.tasks.split(","), args.data_root, args.cache_dir, verbose=True)
    except TaskLookupError as exc:
        raise _fail(str(exc)) from None
    report = find_leakage(args.corpora, sets, MatcherSettings(attempt_supercell=args.supercell))
    _print_table(report)
    if args.json is not None:
        _write_json(Path(args.json), report.to_dict())
        print(f"report written to {args.json}")
    if args.drop_to is not None:
        from matforge.datasets.leakage_drop import write_without

        try:
            result = write_without(args.corpora, report.dropped(), args.drop_to, details=report.to_dict(),
                                   overwrite=args.overwrite, command="matforge " + shlex.join(sys.argv[1:]))
        except DatasetError as exc:
            raise _fail(str(exc)) from None
        print(f"wrote {result.num_records} records to {result.out} ({result.num_dropped} dropped"
              + (f", {result.num_skipped} skipped by the writer, see skipped.jsonl" if result.num_skipped else "") + ")")
    return 0
