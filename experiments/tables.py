"""The numbers of the results page: mean ± std over seeds and the % change against scratch.

A *setting* is (experiment, task, training size); a *cell* of a table is a model × strategy in a
setting. For each seed the test MAE is averaged over the folds that finished; the cell's value is
the mean of those per-seed values and its spread the sample standard deviation over seeds (ddof=1;
None with one seed). The % change against scratch is ``100 · (MAE − MAE_scratch) / MAE_scratch``
with the scratch baseline's ``full`` cell of the same setting (negative: the pre-trained model has
the lower error). Rows with ``status`` other than ``ok`` are left out and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

Setting = tuple[str, str, str]          # experiment, task, size label
CellKey = tuple[str, str, str, str, str]  # experiment, task, size label, model, strategy


@dataclass
class Stat:
    """One table cell: per-seed MAE (mean over folds), and what it aggregates."""

    per_seed: dict[int, float] = field(default_factory=dict)
    folds: int = 0
    failed: int = 0
    wall_s: float = 0.0
    epochs: int = 0
    fit_wall_s: float = 0.0
    total_parameters: int | None = None
    trainable_parameters: int | None = None

    @property
    def mean(self) -> float | None:
        values = list(self.per_seed.values())
        return sum(values) / len(values) if values else None

    @property
    def std(self) -> float | None:
        values = list(self.per_seed.values())
        if len(values) < 2:
            return None
        m = sum(values) / len(values)
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

    @property
    def seconds_per_epoch(self) -> float | None:
        return self.fit_wall_s / self.epochs if self.epochs else None


def size_label(size: Any) -> str:
    return "all" if size in (None, "", "all") else str(int(size))


def size_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == "all" else (0, int(label))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[CellKey, Stat]:
    """Every cell's :class:`Stat` from science ``results.csv`` rows."""
    sums: dict[CellKey, dict[int, list[float]]] = {}
    stats: dict[CellKey, Stat] = {}
    for row in rows:
        key = (row["experiment"], row["task"], size_label(row.get("size")), row["model"], row["strategy"])
        stat = stats.setdefault(key, Stat())
        mae = row.get("mae")
        if row.get("status") != "ok" or mae is None or not math.isfinite(float(mae)):
            stat.failed += 1
            continue
        sums.setdefault(key, {}).setdefault(int(row["seed"]), []).append(float(mae))
        stat.folds += 1
        stat.wall_s += float(row.get("wall_s") or 0.0)
        if row.get("epochs_run") and row.get("fit_wall_s") is not None:
            stat.epochs += int(row["epochs_run"])
            stat.fit_wall_s += float(row["fit_wall_s"])
        for name in ("total_parameters", "trainable_parameters"):
            if row.get(name) is not None:
                setattr(stat, name, int(row[name]))
    for key, per_seed in sums.items():
        stats[key].per_seed = {seed: sum(v) / len(v) for seed, v in sorted(per_seed.items())}
    return stats


def percent_change(value: float | None, reference: float | None) -> float | None:
    """``100 · (value − reference) / |reference|``; None when either is missing or reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / abs(reference)


def settings_of(stats: dict[CellKey, Stat], experiment: str) -> list[Setting]:
    """The (experiment, task, size) settings with results, tasks in first-seen order, sizes ascending."""
    tasks: list[str] = []
    sizes: dict[str, set[str]] = {}
    for (exp, task, size, _, _) in stats:
        if exp != experiment:
            continue
        if task not in tasks:
            tasks.append(task)
        sizes.setdefault(task, set()).add(size)
    return [(experiment, t, s) for t in tasks for s in sorted(sizes[t], key=size_order)]


def cell(stats: dict[CellKey, Stat], setting: Setting, model: str, strategy: str = "full") -> Stat | None:
    stat = stats.get((*setting, model, strategy))
    return stat if stat is not None and stat.mean is not None else None


def fmt_number(x: float | None, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits without exponent notation; ``—`` when missing."""
    if x is None or not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{x:.{decimals}f}" if decimals > 0 else f"{round(x, decimals):.0f}"


def fmt_stat(stat: Stat | None, reference: float | None = None) -> str:
    """``mean ± std (+x.x %)``; the % only when ``reference`` is given."""
    if stat is None:
        return "—"
    text = f"{fmt_number(stat.mean)} ± {fmt_number(stat.std, 2)}"
    change = percent_change(stat.mean, reference)
    if change is not None:
        text += f" ({'+' if change > 0 else '−' if change < 0 else '±'}{abs(change):.1f} %)"
    return text
