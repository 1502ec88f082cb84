"""The hook for the corpus-vs-downstream leakage check (``matforge.datasets.leakage``, built elsewhere).

:func:`leakage_overlap` writes ``OUT/leakage.json`` with the number of downstream structures found
in the corpus when that module is installed and offers ``overlap_count(corpus_dir, task_files)``;
otherwise it returns None and the report says the check did not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def leakage_overlap(out: Path, corpus_dir: Path, task_files: list[str]) -> dict[str, Any] | None:
    """Run the leakage check once (cached in ``OUT/leakage.json``); None when it is unavailable."""
    import json

    path = out / "leakage.json"
    if path.is_file():
        return json.loads(path.read_text())
    try:
        from matforge.datasets import leakage  # type: ignore[attr-defined]
    except ImportError:
        return None
    count = getattr(leakage, "overlap_count", None)
    if count is None:
        return None
    result = {"overlap": int(count(corpus_dir, task_files)), "method": "matforge.datasets.leakage.overlap_count",
              "tasks": task_files}
    from matforge.finetune.bench_results import write_json_atomic

    write_json_atomic(path, result)
    return result
