"""The corpus-vs-downstream leakage check of the science run (:mod:`matforge.datasets.leakage`).

:func:`leakage_overlap` compares the corpus with the structures of the run's downstream tasks (same
reduced formula, then pymatgen's ``StructureMatcher``) once, and caches the result in
``OUT/leakage.json``: ``overlap`` (corpus records that match any downstream structure), ``tasks``
(per task: structures, shared formulas, corpus records matched, its structures matched) and the
criterion. A task whose data cannot be found is listed under ``unavailable`` rather than stopping
the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def leakage_overlap(out: Path, corpus_dir: Path, tasks: list[str], data_root: str | Path | None = None,
                    cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Run the leakage check once (cached in ``OUT/leakage.json``); None when the corpus is missing.

    ``data_root``/``cache_dir``: where the tasks' files are and their converted cache, as for
    :func:`matforge.finetune.leakage_tasks.task_sets` (defaults: the fine-tuning harness's)."""
    import json

    from matforge.datasets.leakage import find_leakage
    from matforge.finetune.bench_results import write_json_atomic
    from matforge.finetune.leakage_tasks import TaskLookupError, task_sets

    path = out / "leakage.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("task_names") == sorted(tasks):
            return cached
    if not (Path(corpus_dir) / "manifest.json").is_file():
        return None
    available, unavailable = [], []
    for name in tasks:
        try:
            task_sets([name], data_root, cache_dir, verbose=False)
            available.append(name)
        except TaskLookupError as exc:
            unavailable.append({"task": name, "reason": str(exc)})
    report = find_leakage([corpus_dir], task_sets(available, data_root, cache_dir, verbose=False)) if available else None
    result = {"overlap": report.num_corpus_records_matched if report else 0,
              "method": f"matforge.datasets.leakage: {report.criterion if report else 'no task data'}",
              "task_names": sorted(tasks),
              "tasks": [dict(t.__dict__) for t in report.tasks] if report else [],
              "unavailable": unavailable,
              "seconds": round(report.seconds, 1) if report else 0.0}
    write_json_atomic(path, result)
    return result
