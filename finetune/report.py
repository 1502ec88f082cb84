"""``summary.md`` of a fine-tuning benchmark: mean ± std per cell in the seed paper's table shape.

For every task and training size, one table: rows = pre-trained backbones, then the scratch
baseline(s); columns = "embedding + first 1 / 2 / 3 blocks frozen" (``freeze:1..3``) and full
fine-tuning, then any other strategy (``probe``, ``lrdecay:F``). A cell shows the test metric's
mean ± std over folds × seeds (std with ddof=0; MAE in the task's units, or ROC-AUC for
classification) and, for a pre-trained backbone, the % change against its scratch baseline's
``full`` cell at the same size (negative = lower MAE = better; for ROC-AUC positive is better).
The best cell of each table is in bold. Published reference numbers of the task are listed
below its table, and a second table gives each cell's wall time (summed over the folds, mean over
seeds) and trainable parameters.

Everything is computed from ``results.csv`` rows and ``bench.json`` (see
:mod:`matforge.finetune.harness`), so :func:`write_report` can rebuild the report of a finished
or partial grid at any time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from matforge.finetune.bench_grid import STRATEGY_ORDER, BackboneSpec, scratch_for

NA = "—"


@dataclass
class CellStat:
    """Aggregate of one (task, size, backbone, strategy) over folds × seeds."""

    values: list[float] = field(default_factory=list)
    walls: dict[int, float] = field(default_factory=dict)  # seed -> wall time summed over folds (s)
    train_sizes: list[int] = field(default_factory=list)
    trainable: int | None = None
    failed: int = 0

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if not self.values:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / len(self.values))

    @property
    def wall(self) -> float | None:
        """Wall time of the folds (s): summed over folds, mean over seeds."""
        return sum(self.walls.values()) / len(self.walls) if self.walls else None

    @property
    def train_size(self) -> float | None:
        return sum(self.train_sizes) / len(self.train_sizes) if self.train_sizes else None


Key = tuple[str, str, str, str]  # task, size label, backbone label, strategy


def metric_of(kind: str) -> str:
    return "roc_auc" if kind == "classification" else "mae"


def aggregate(rows: Sequence[dict], kinds: dict[str, str]) -> dict[Key, CellStat]:
    """Group ``results.csv`` rows by (task, size, backbone, strategy)."""
    stats: dict[Key, CellStat] = {}
    for row in rows:
        key = (row["task"], str(row["size"]), row["backbone"], row["strategy"])
        stat = stats.setdefault(key, CellStat())
        value = row.get(metric_of(kinds.get(row["task"], "regression")))
        if row.get("status") != "ok" or value is None or (isinstance(value, float) and math.isnan(value)):
            stat.failed += 1
            continue
        stat.values.append(float(value))
        if row.get("wall_s") is not None:
            seed = int(row.get("seed") or 0)
            stat.walls[seed] = stat.walls.get(seed, 0.0) + float(row["wall_s"])
        if row.get("train_size") is not None:
            stat.train_sizes.append(int(row["train_size"]))
        if row.get("trainable_parameters") is not None:
            stat.trainable = int(row["trainable_parameters"])
    return stats


def strategy_header(strategy: str) -> str:
    """Column title in the seed paper's words."""
    if strategy.startswith("freeze:"):
        k = strategy.split(":", 1)[1]
        return f"embedding + first {k} block{'s' if k != '1' else ''} frozen"
    return {"full": "full fine-tuning", "probe": "linear probe (backbone frozen)"}.get(strategy, strategy)


def ordered_strategies(strategies: Sequence[str]) -> list[str]:
    """``freeze:1..3`` and ``full`` first (the seed table's columns), then the others as given."""
    first = [s for s in STRATEGY_ORDER if s in strategies]
    return first + [s for s in strategies if s not in first]


def size_sort_key(label: str) -> tuple[int, int]:
    return (1, 0) if label == "all" else (0, int(label))


def fmt(x: float | None, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, never in exponent notation (1267, 44.55, 0.03412)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    if x == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{x:.{decimals}f}" if decimals > 0 else f"{round(x, decimals):.0f}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return NA
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_count(n: int | None) -> str:
    if n is None:
        return NA
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def percent_change(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / abs(reference) * 100.0


def fmt_percent(p: float | None) -> str:
    return "" if p is None else f" ({'+' if p > 0 else '−' if p < 0 else '±'}{abs(p):.1f} %)"


def backbone_specs(bench: dict) -> list[BackboneSpec]:
    return [BackboneSpec(**b) for b in bench.get("backbones", [])]


def row_label(bb: BackboneSpec) -> str:
    return f"scratch ({bb.arch}, random weights)" if bb.scratch else bb.label


@dataclass
class TaskTable:
    """One task × size table: the stats, its rows (backbones) and columns (strategies)."""

    task: str
    size: str
    backbones: list[BackboneSpec]
    strategies: list[str]
    stats: dict[Key, CellStat]
    higher_is_better: bool

    def stat(self, backbone: str, strategy: str) -> CellStat | None:
        return self.stats.get((self.task, self.size, backbone, strategy))

    def scratch_mean(self, bb: BackboneSpec) -> float | None:
        ref = scratch_for(bb, self.backbones)
        stat = self.stat(ref.label, "full") if ref is not None else None
        return stat.mean if stat is not None else None

    def best(self) -> tuple[str, str] | None:
        cells = [(s.mean, bb.label, st) for bb in self.backbones for st in self.strategies
                 if (s := self.stat(bb.label, st)) is not None and s.mean is not None]
        if not cells:
            return None
        pick = max if self.higher_is_better else min
        _, label, strategy = pick(cells, key=lambda c: c[0])
        return label, strategy


def tables_for(task: str, bench: dict, stats: dict[Key, CellStat]) -> list[TaskTable]:
    kind = bench["tasks"][task].get("kind", "regression")
    sizes = sorted({k[1] for k in stats if k[0] == task}, key=size_sort_key)
    strategies = ordered_strategies(bench.get("strategies", list(STRATEGY_ORDER)))
    return [TaskTable(task, size, backbone_specs(bench), strategies, stats, kind == "classification") for size in sizes]


def markdown_table(table: TaskTable) -> list[str]:
    """The seed-shaped table: ``mean ± std (% vs scratch)``, best in bold."""
    best = table.best()
    lines = ["| backbone | " + " | ".join(strategy_header(s) for s in table.strategies) + " |",
             "|---|" + "---|" * len(table.strategies)]
    for bb in table.backbones:
        cells = []
        ref = None if bb.scratch else table.scratch_mean(bb)
        for strategy in table.strategies:
            stat = table.stat(bb.label, strategy)
            if stat is None or stat.mean is None:
                cells.append(NA if stat is None else f"failed ({stat.failed})")
                continue
            text = f"{fmt(stat.mean)} ± {fmt(stat.std, 2)}" + fmt_percent(percent_change(stat.mean, ref))
            if stat.failed:
                text += f" [{stat.failed} failed]"
            cells.append(f"**{text}**" if best == (bb.label, strategy) else text)
        lines.append(f"| {row_label(bb)} | " + " | ".join(cells) + " |")
    return lines


def wall_table(table: TaskTable) -> list[str]:
    lines = ["| backbone | " + " | ".join(table.strategies) + " |", "|---|" + "---|" * len(table.strategies)]
    for bb in table.backbones:
        cells = []
        for strategy in table.strategies:
            stat = table.stat(bb.label, strategy)
            cells.append(NA if stat is None or stat.wall is None
                         else f"{fmt_seconds(stat.wall)} · {fmt_count(stat.trainable)} trainable")
        lines.append(f"| {row_label(bb)} | " + " | ".join(cells) + " |")
    totals = []
    for strategy in table.strategies:
        walls = [s.wall for bb in table.backbones
                 if (s := table.stat(bb.label, strategy)) is not None and s.wall is not None]
        totals.append(fmt_seconds(sum(walls)) if walls else NA)
    lines.append("| total per strategy | " + " | ".join(totals) + " |")
    return lines


def references_line(info: dict) -> str | None:
    refs = info.get("references") or []
    if not refs:
        return None
    parts = [f"{r['model']} {fmt(r['value'])}" for r in refs]
    return f"Published ({info.get('units', '')}): " + " · ".join(parts) + "."


def protocol_text(info: dict, bench: dict) -> str:
    protocol = info.get("protocol")
    if protocol == "matbench_kfold":
        text = "Matbench v0.1: KFold(n_splits=5, shuffle=True, random_state=18012019) over the dataset order"
    elif protocol == "given_split":
        text = "the source's own test file as the test set"
    else:
        text = "repeated random test splits (fold k: seed k)"
    val = bench.get("settings", {}).get("val_fraction", 0.1)
    return (f"{text}; validation = {val:.0%} of each training fold (fixed seed), for early stopping only; "
            "normalisation fitted on each fold's training part; the test fold is used only by the final evaluation")


def data_text(info: dict) -> str:
    """Which files were read (with their sha256) and where the published file is."""
    shas = info.get("file_sha256") or []
    files = ", ".join(f"`{f}`" + (f" (sha256 {shas[k]})" if k < len(shas) else "")
                      for k, f in enumerate(info.get("files", [])))
    text = f"Data: {files}; {info.get('records')} records, target `{info.get('target')}`."
    expected = info.get("sha256")
    if info.get("url"):
        text += f" Download: {info['url']}"
        if expected:
            same = bool(shas) and shas[0] == expected
            text += (f" (sha256 {expected}, {info.get('checksum_note', '')}; "
                     + ("the file read here is that file)" if same else "the file read here is not that file)"))
        text += "."
    return text


def summary_markdown(rows: Sequence[dict], bench: dict) -> str:
    """The whole ``summary.md``."""
    kinds = {name: info.get("kind", "regression") for name, info in bench.get("tasks", {}).items()}
    stats = aggregate(rows, kinds)
    info_all = bench.get("info", {})
    lines = ["# Fine-tuning benchmark", ""]
    if info_all.get("command"):
        lines += [f"Command: `{info_all['command']}`", ""]
    if info_all.get("machine"):
        lines += [f"Machine: {info_all['machine']}; {info_all.get('jobs', 1)} job(s) in parallel."
                  + (f" Date: {info_all['date']}." if info_all.get("date") else ""), ""]
    seeds = bench.get("seeds", [])
    lines += [f"Cells: {len(rows)} ({sum(1 for r in rows if r.get('status') == 'ok')} finished, "
              f"{sum(1 for r in rows if r.get('status') != 'ok')} failed); seeds {seeds}. "
              "Each cell: mean ± std over folds × seeds; (%) = change against the scratch baseline's full "
              "fine-tuning at the same training size; best per table in bold.", ""]
    for task, info in bench.get("tasks", {}).items():
        metric = "ROC-AUC" if info.get("kind") == "classification" else f"MAE ({info.get('units', '')})"
        lines += [f"## {task}: {metric}", "", info.get("description", ""), ""]
        lines += [data_text(info), ""]
        if info.get("source_note"):
            lines += [f"Note: {info['source_note']}.", ""]
        lines += [f"Protocol: {protocol_text(info, bench)}.", ""]
        for table in tables_for(task, bench, stats):
            sizes = [s.train_size for bb in table.backbones for st in table.strategies
                     if (s := table.stat(bb.label, st)) is not None and s.train_size is not None]
            actual = f" ({sum(sizes) / len(sizes):.0f} structures on average)" if sizes else ""
            lines += [f"### training size {table.size}{actual}", ""]
            lines += markdown_table(table) + [""]
            ref = references_line(info)
            if ref:
                lines += [ref, ""]
            lines += ["Wall time of the folds (mean over seeds) and trainable parameters:", ""]
            lines += wall_table(table) + [""]
        failed = [r for r in rows if r["task"] == task and r.get("status") != "ok"]
        if failed:
            lines += [f"Failed cells ({len(failed)}):", ""]
            lines += [f"- `{r['key']}`: {r.get('error') or '?'}" for r in failed[:20]]
            lines += [f"- ... and {len(failed) - 20} more" if len(failed) > 20 else "", ""]
    return "\n".join(lines).rstrip() + "\n"


def load_bench(out: str | Path) -> tuple[list[dict], dict]:
    """``(rows, bench)`` from ``OUT/results.csv`` and ``OUT/bench.json``."""
    from matforge.finetune.bench_results import read_results_csv

    out = Path(out)
    rows = read_results_csv(out / "results.csv") if (out / "results.csv").exists() else []
    bench = json.loads((out / "bench.json").read_text())
    return rows, bench


def write_summary(out: str | Path, rows: Sequence[dict] | None = None, bench: dict | None = None) -> Path:
    """Write ``OUT/summary.md`` (atomically) and return its path."""
    from matforge.finetune.bench_results import write_text_atomic

    out = Path(out)
    if rows is None or bench is None:
        rows, bench = load_bench(out)
    path = out / "summary.md"
    write_text_atomic(path, summary_markdown(rows, bench))
    return path


def write_report(out: str | Path, plots: bool = True) -> list[Path]:
    """``summary.md`` and (``plots``) the PNGs of ``OUT``; returns the files written."""
    rows, bench = load_bench(out)
    written = [write_summary(out, rows, bench)]
    if plots:
        from matforge.finetune.bench_plots import write_plots

        written += write_plots(out, rows, bench)
    return written


__all__ = ["aggregate", "summary_markdown", "write_summary", "write_report", "load_bench", "CellStat", "TaskTable",
           "tables_for", "percent_change", "strategy_header", "ordered_strategies"]
