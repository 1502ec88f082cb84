"""The fine-tuning benchmark's tables in ``docs/benchmarks.md``, written by the harness.

Each task owns one section between two markers::

    <!-- bench finetune: TASK -->
    ... generated: command, machine, date, the table ...
    <!-- end bench finetune: TASK -->

:func:`update_docs_section` replaces what lies between a task's markers and leaves everything else
in the file as it was; a task without markers yet is appended at the end (a missing file is
created with a title). The table has one row per model × strategy (scratch first), one column per
training size with the test MAE's mean ± std over folds × seeds, the wall time of the folds, and
the task's published reference numbers as extra rows, so the figures are never typed by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from matforge.finetune.report import (NA, aggregate, backbone_specs, fmt, fmt_count, fmt_seconds, metric_of,
                                      ordered_strategies, row_label, size_sort_key, strategy_header)
from matforge.training.docs_tables import machine_description, today, update_section


def begin_marker(task: str) -> str:
    return f"<!-- bench finetune: {task} -->"


def end_marker(task: str) -> str:
    return f"<!-- end bench finetune: {task} -->"


def docs_section(task: str, rows: Sequence[dict], bench: dict, *, command: str, machine: str, date: str) -> str:
    """The generated body of a task's section (without the markers)."""
    info = bench["tasks"][task]
    kind = info.get("kind", "regression")
    metric = "ROC-AUC" if metric_of(kind) == "roc_auc" else f"MAE ({info.get('units', '')})"
    stats = aggregate([r for r in rows if r["task"] == task], {task: kind})
    sizes = sorted({k[1] for k in stats}, key=size_sort_key)
    folds = sorted({int(r["fold"]) for r in rows if r["task"] == task})
    seeds = sorted({int(r["seed"]) for r in rows if r["task"] == task})
    lines = [f"### {task}: test {metric}", "",
             f"- command: `{command}`", f"- machine: {machine}", f"- date: {date}",
             f"- data: {', '.join(Path(f).name for f in info.get('files', []))} ({info.get('records')} records), "
             f"protocol {info.get('protocol')}, folds {folds}, seeds {seeds}", ""]
    size_titles = [f"{metric}, n = {s}" if len(sizes) > 1 else f"{metric}, mean ± std over {len(folds)} folds"
                   for s in sizes]
    lines += ["| model | strategy | " + " | ".join(size_titles) + " | wall time of the folds | trainable parameters |",
              "|---|---|" + "---|" * len(sizes) + "---|---|"]
    backbones = backbone_specs(bench)
    ordered = [b for b in backbones if b.scratch] + [b for b in backbones if not b.scratch]
    for bb in ordered:
        for strategy in (["full"] if bb.scratch else ordered_strategies(bench.get("strategies", []))):
            cells, walls, trainable = [], [], None
            for size in sizes:
                stat = stats.get((task, size, bb.label, strategy))
                if stat is None or stat.mean is None:
                    cells.append(NA)
                    walls.append(NA)
                    continue
                cells.append(f"{fmt(stat.mean)} ± {fmt(stat.std, 2)}")
                walls.append(fmt_seconds(stat.wall))
                trainable = stat.trainable if stat.trainable is not None else trainable
            if all(c == NA for c in cells):
                continue
            how = "full (from scratch)" if bb.scratch else strategy_header(strategy)
            lines.append(f"| {row_label(bb)} | {how} | " + " | ".join(cells)
                         + f" | {' / '.join(walls)} | {fmt_count(trainable)} |")
    for ref in info.get("references", []):
        values = [fmt(ref["value"])] + [NA] * (len(sizes) - 1)
        lines.append(f"| {ref['model']} (published) | {NA} | " + " | ".join(values) + f" | {NA} | {NA} |")
    if len(sizes) > 1:
        lines += ["", "Wall times are listed per training size, in the order of the columns."]
    return "\n".join(lines) + "\n"


def update_docs_section(path: str | os.PathLike, task: str, body: str) -> Path:
    """Put ``body`` between the task's markers in ``path`` (atomically), keeping the rest of the file."""
    return update_section(path, f"bench finetune: {task}", body)


def write_docs(path: str | os.PathLike, rows: Sequence[dict], bench: dict, *, command: str,
               machine: str | None = None, date: str | None = None) -> Path:
    """Refresh every task's section of ``path`` from a benchmark's rows."""
    machine = machine or machine_description()
    date = date or today()
    for task in bench.get("tasks", {}):
        if any(r["task"] == task and r.get("status") == "ok" for r in rows):
            update_docs_section(path, task, docs_section(task, rows, bench, command=command, machine=machine,
                                                         date=date))
    return Path(path)
