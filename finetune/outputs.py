"""What a fine-tuning run leaves in ``--out DIR``, written all at once.

::

    DIR/card.json, DIR/model.safetensors   the fine-tuned model in the backbone format (its card's
                                           provenance: parent backbone and its hash, strategy, data
                                           manifest hash, split, metrics, dropped heads)
    DIR/metrics.json                       the run's figures (see matforge.finetune.api)
    DIR/predictions.csv                    id,target,prediction of every test structure
                                           (potentials: energy per atom, eV/atom)
    DIR/split.json                         the record ids of the train, val and test sides
    DIR/history.csv                        one row per epoch: train loss, lr, validation metrics
    DIR/parity.png                         prediction against target on the test set
    DIR/tensorboard/                       event files (when TensorBoard is installed)

Everything is written into ``.DIR.partial-*`` beside ``DIR`` and renamed into place when complete,
so a failed or interrupted run leaves no half-written ``DIR``; an existing ``DIR`` is replaced only
with ``overwrite`` (and only after the new one is complete).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from matforge.datasets.publish import publish, staging_beside
from matforge.finetune.errors import FinetuneError

__all__ = ["check_target", "staging_beside", "publish", "json_safe", "write_json", "write_predictions",
           "write_history", "parity_plot"]


def check_target(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse early an existing non-empty ``out`` without ``overwrite``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FinetuneError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    return out


def json_safe(value: Any) -> Any:
    """A JSON-able copy of ``value``: non-finite floats become null, numpy scalars Python numbers,
    anything else unknown its ``str``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_predictions(path: Path, ids: Sequence[str], target: np.ndarray, prediction: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "target", "prediction"])
        for record_id, t, p in zip(ids, target, prediction):
            writer.writerow([record_id, repr(float(t)), repr(float(p))])


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in history:
            writer.writerow([repr(row.get(c, float("nan"))) for c in columns])


def parity_plot(path: Path, target: np.ndarray, prediction: np.ndarray, title: str, units: str) -> None:
    """Prediction against target with the y = x line (PNG, matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    have = np.isfinite(target) & np.isfinite(prediction)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    try:
        ax.scatter(target[have], prediction[have], s=9, alpha=0.6, edgecolors="none")
        if have.any():
            lo = float(min(target[have].min(), prediction[have].min()))
            hi = float(max(target[have].max(), prediction[have].max()))
            ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        label = f" ({units})" if units else ""
        ax.set_xlabel(f"target{label}")
        ax.set_ylabel(f"prediction{label}")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
