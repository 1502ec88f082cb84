"""``OUT/results.csv`` of ``matforge bench science``: every fine-tuning cell of both experiments.

Gathered from the harness grids (``OUT/finetune/<exp>/<task>/seed<s>/results.csv`` and each cell's
``metrics.json``) with the backbone labels turned into model names: ``scratch`` (``none``),
``scratch-attention`` (a ``none:`` copy of the attention backbone), else the label's run name
(``backbones/exp1-efs`` -> ``efs``). Columns: :data:`SCIENCE_COLUMNS`; ``mae`` in the task's
``units``; ``wall_s`` the cell's wall time (s); ``epochs_run`` the epochs it trained (early stopping).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

SCIENCE_COLUMNS = ("experiment", "task", "model", "arch", "strategy", "fold", "size", "seed", "status", "mae",
                   "units", "train_size", "trainable_parameters", "total_parameters", "best_epoch", "epochs_run",
                   "wall_s", "fit_wall_s", "key", "error")
INTEGERS = {"fold", "seed", "train_size", "trainable_parameters", "total_parameters", "best_epoch", "epochs_run"}
FLOATS = {"mae", "wall_s", "fit_wall_s"}


def model_name(label: str, experiment: str) -> str:
    """The model name of a harness backbone label (see the module docstring)."""
    if label == "none":
        return "scratch"
    if label.startswith("none:"):
        return "scratch-" + model_name(label.split(":", 1)[1], experiment)
    name = Path(label.rstrip("/")).name
    prefix = f"{experiment}-"
    return name[len(prefix):] if name.startswith(prefix) else name


def gather(out: Path) -> list[dict[str, Any]]:
    """Rows of every grid under ``OUT/finetune`` (experiment, task, seed order)."""
    from matforge.finetune.bench_results import read_results_csv

    rows: list[dict[str, Any]] = []
    for path in sorted((out / "finetune").glob("*/*/seed*/results.csv")):
        experiment = path.parents[2].name
        grid = path.parent
        for row in read_results_csv(path):
            metrics_file = grid / "cells" / str(row["key"]) / "metrics.json"
            epochs = None
            if metrics_file.is_file():
                epochs = (json.loads(metrics_file.read_text()).get("metrics") or {}).get("epochs_run")
            rows.append({**row, "experiment": experiment, "model": model_name(str(row["backbone"]), experiment),
                         "epochs_run": epochs})
    return rows


def write_science_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` with :data:`SCIENCE_COLUMNS` atomically."""
    from matforge.finetune.bench_results import write_columns_csv

    write_columns_csv(path, rows, SCIENCE_COLUMNS)


def read_science_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a science ``results.csv``, numbers parsed (empty -> None)."""
    from matforge.finetune.bench_results import read_typed_csv

    return read_typed_csv(path, INTEGERS, FLOATS)
