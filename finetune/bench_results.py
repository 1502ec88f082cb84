"""The files of a fine-tuning benchmark: ``results.csv`` rows, atomic JSON and text writes.

``results.csv`` has one row per finished or failed cell (:data:`RESULT_COLUMNS`): the cell, its
``status`` (ok | failed), the test metrics in the task's ``units`` (``mae``, ``rmse``, ``r2`` for
regression; ``roc_auc``, ``accuracy`` for classification; for potentials ``mae`` is the energy per
atom and ``forces_mae`` is in eV/Å), the sizes, trainable and total parameters, the best epoch,
``wall_s`` (the whole cell as the harness timed it, s), ``fit_wall_s`` (the fine-tuning API's own
timing), the cell ``key`` and the first line of an error. Every write goes to ``NAME.partial``
first and is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence


from matforge.finetune.bench_grid import Cell, size_label

RESULT_COLUMNS = ("task", "backbone", "arch", "fold", "size", "strategy", "seed", "status",
                  "mae", "rmse", "r2", "roc_auc", "accuracy", "forces_mae", "val_mae",
                  "train_size", "val_size", "test_size", "trainable_parameters", "total_parameters", "best_epoch",
                  "wall_s", "fit_wall_s", "units", "key", "error")
METRIC_COLUMNS = {"mae": "test_mae", "rmse": "test_rmse", "r2": "test_r2", "roc_auc": "test_roc_auc",
                  "accuracy": "test_accuracy", "forces_mae": "test_forces_mae"}
PASSED_THROUGH = ("val_mae", "train_size", "val_size", "test_size", "trainable_parameters", "total_parameters",
                  "best_epoch")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.partial`` and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    from matforge.finetune.outputs import json_safe

    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_columns_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """``rows`` as a CSV with exactly ``columns`` (None -> empty cell), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_text_atomic(path, buf.getvalue())


def write_results_csv(path: Path, rows: Iterable[dict]) -> None:
    """``results.csv`` with :data:`RESULT_COLUMNS`, written atomically."""
    write_columns_csv(path, rows, RESULT_COLUMNS)


RESULT_INTEGERS = frozenset({"fold", "seed", "train_size", "val_size", "test_size", "trainable_parameters",
                             "total_parameters", "best_epoch"})
RESULT_FLOATS = frozenset({"mae", "rmse", "r2", "roc_auc", "accuracy", "forces_mae", "val_mae", "wall_s", "fit_wall_s"})


def read_typed_csv(path: Path, integers: frozenset[str] | set[str], floats: frozenset[str] | set[str]) -> list[dict]:
    """Rows of a CSV file as dicts: columns in ``integers``/``floats`` parsed, empty cells None."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v == "" or v is None:
                    row[k] = None
                elif k in integers:
                    row[k] = int(float(v))
                elif k in floats:
                    row[k] = float(v)
                else:
                    row[k] = v
            rows.append(row)
    return rows


def read_results_csv(path: Path) -> list[dict]:
    """Rows of a ``results.csv`` with numbers parsed (empty -> None)."""
    return read_typed_csv(path, RESULT_INTEGERS, RESULT_FLOATS)


def result_row(cell: Cell, arch: str | None, units: str, metrics: dict | None, wall_s: float | None,
               error: str | None) -> dict:
    """One ``results.csv`` row from a cell's metrics (or its error)."""
    row: dict[str, Any] = {"task": cell.task, "backbone": cell.backbone, "arch": arch or "", "fold": cell.fold,
                           "size": size_label(cell.size), "strategy": cell.strategy, "seed": cell.seed,
                           "key": cell.key, "units": units, "wall_s": wall_s,
                           "status": "ok" if error is None else "failed",
                           "error": "" if error is None else error.strip().splitlines()[0][:300]}
    metrics = metrics or {}
    for column, name in METRIC_COLUMNS.items():
        row[column] = metrics.get(name)
    for name in PASSED_THROUGH:
        row[name] = metrics.get(name)
    row["fit_wall_s"] = metrics.get("wall_s")
    if metrics.get("units"):
        row["units"] = metrics["units"]
    return row



def headline(row: dict) -> str:
    if row.get("mae") is not None:
        return f"MAE {row['mae']:.4g} {row.get('units') or ''}".rstrip()
    if row.get("roc_auc") is not None:
        return f"ROC-AUC {row['roc_auc']:.4f}"
    return "done"

