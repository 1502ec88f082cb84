"""PNG figures of a fine-tuning benchmark (matplotlib, Agg backend: no display needed).

* ``plots/learning_curve_<task>.png``: test MAE (or ROC-AUC) against the number of training
  structures (the mean ``train_size`` the runs reported, else the requested size), one line per
  backbone × strategy, error bars = std over folds × seeds; log-scaled x when sizes span > 5×.
* ``plots/parity_<task>.png``: predicted against DFT value on the test folds, one panel per
  backbone × strategy, at the largest training size and the lowest seed, all folds pooled. Read
  from each cell's ``run/predictions.csv`` (``id,target,prediction``), keeping only the ids of the
  fold's test set (``splits/<task>/fold<k>.json``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

from matforge.finetune.bench_grid import slug
from matforge.finetune.report import (aggregate, backbone_specs, metric_of, ordered_strategies, row_label,
                                      size_sort_key)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(out: Path, task: str, rows: Sequence[dict], bench: dict) -> Path | None:
    """Write the task's learning-curve PNG; None when no cell of the task finished."""
    info = bench["tasks"][task]
    stats = aggregate([r for r in rows if r["task"] == task], {task: info.get("kind", "regression")})
    if not any(s.values for s in stats.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs_all: list[float] = []
    for bb in backbone_specs(bench):
        for strategy in ordered_strategies(bench.get("strategies", [])) if not bb.scratch else ["full"]:
            points = []
            for (t, size, label, st), stat in stats.items():
                if label != bb.label or st != strategy or stat.mean is None:
                    continue
                x = stat.train_size if stat.train_size is not None else (None if size == "all" else float(size))
                if x is not None:
                    points.append((x, stat.mean, stat.std or 0.0))
            if not points:
                continue
            points.sort()
            xs_all += [p[0] for p in points]
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                        capsize=3, linestyle="--" if bb.scratch else "-",
                        label=row_label(bb) if bb.scratch else f"{bb.label}, {strategy}")
    if xs_all and max(xs_all) > 5 * min(xs_all):
        ax.set_xscale("log")
    classification = metric_of(info.get("kind", "regression")) == "roc_auc"
    metric = "ROC-AUC" if classification else f"test MAE ({info.get('units', '')})"
    ax.set_xlabel("training structures")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "plots" / f"learning_curve_{slug(task)}.png")


def read_predictions(path: Path, keep: set[str] | None = None) -> tuple[list[float], list[float]]:
    """``(targets, predictions)`` of a ``predictions.csv``, only ids in ``keep`` (if given)."""
    targets, predictions = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if keep is not None and str(row.get("id")) not in keep:
                continue
            try:
                t, p = float(row["target"]), float(row["prediction"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(t) and math.isfinite(p):
                targets.append(t)
                predictions.append(p)
    return targets, predictions


def parity(out: Path, task: str, rows: Sequence[dict], bench: dict) -> Path | None:
    """Write the task's parity PNG; None when no finished cell left predictions."""
    ok = [r for r in rows if r["task"] == task and r.get("status") == "ok"]
    if not ok:
        return None
    size = max({str(r["size"]) for r in ok}, key=size_sort_key)
    seed = min(int(r["seed"]) for r in ok)
    split_dir = out / "splits" / slug(task)
    panels = []
    for bb in backbone_specs(bench):
        for strategy in ordered_strategies(bench.get("strategies", [])) if not bb.scratch else ["full"]:
            ts: list[float] = []
            ps: list[float] = []
            for r in ok:
                if (r["backbone"], r["strategy"], str(r["size"]), int(r["seed"])) != (bb.label, strategy, size, seed):
                    continue
                pred = out / "cells" / r["key"] / "run" / "predictions.csv"
                if not pred.exists():
                    continue
                split_file = split_dir / f"fold{int(r['fold'])}.json"
                keep = set(json.loads(split_file.read_text())["test"]) if split_file.exists() else None
                t, p = read_predictions(pred, keep)
                ts += t
                ps += p
            if ts:
                panels.append((row_label(bb) if bb.scratch else f"{bb.label}\n{strategy}", ts, ps))
    if not panels:
        return None
    plt = _pyplot()
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.2 * nrows), squeeze=False)
    units = bench["tasks"][task].get("units", "")
    for ax, (title, ts, ps) in zip(axes.flat, panels):
        lo, hi = min(ts + ps), max(ts + ps)
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1)
        ax.scatter(ts, ps, s=6, alpha=0.6)
        mae = sum(abs(a - b) for a, b in zip(ts, ps)) / len(ts)
        ax.set_title(f"{title}\nMAE {mae:.4g} {units}", fontsize=8)
        ax.set_xlabel(f"DFT ({units})", fontsize=8)
        ax.set_ylabel(f"predicted ({units})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task}: test folds, training size {size}, seed {seed}", fontsize=9)
    return _save(fig, out / "plots" / f"parity_{slug(task)}.png")


def write_plots(out: str | Path, rows: Sequence[dict], bench: dict) -> list[Path]:
    """All PNGs of a benchmark directory; returns the files written."""
    out = Path(out)
    written = []
    for task in bench.get("tasks", {}):
        for make in (learning_curve, parity):
            path = make(out, task, rows, bench)
            if path is not None:
                written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close ``fig``; return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
