"""The fine-tuning stages: one grid of the existing harness (``matforge bench finetune``) per
experiment × task × seed, so that a session can stop between grids and a grid resumes by cells.

Grid ``OUT/finetune/<exp>/<task>/seed<s>/`` is a harness output directory (cells, results.csv,
bench.json, splits; :mod:`matforge.finetune.harness`): finished cells are reused and a cell run with
other settings is refused by the harness. Backbones are named relative to ``OUT``
(``backbones/exp1-efs``; ``none`` = scratch copy of the first; ``none:backbones/exp2-attention``),
and the harness runs inside ``OUT``, so the output directory can move. Every cell fine-tunes with
``allow_new_elements=True``: a corpus never holds every element of the downstream data, and an
unseen element gets a fresh embedding row (trained even when the embedding is frozen).
A grid is complete (``complete.json``) when every cell finished without error.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from matforge.experiments.plan import FinetunePlan, TaskPlan
from matforge.finetune.harness import CellSpec, run_with_finetune

COMPLETE = "complete.json"


def run_cell(spec: CellSpec) -> dict:
    """The harness runner of these grids: one fine-tuning with new elements allowed."""
    from matforge.finetune.api import finetune

    kwargs: dict[str, Any] = {k: v for k, v in spec.hyper.items() if v is not None}
    return finetune(spec.backbone, spec.data, spec.target, spec.out, arch=spec.arch, task=spec.kind,
                    pooling=spec.pooling, units=spec.units, strategy=spec.cell.strategy, split=spec.split,
                    seed=spec.cell.seed, threads=spec.threads, progress=False, tensorboard=False,
                    allow_new_elements=True, **kwargs)


run_cell.warm_modules = run_with_finetune.warm_modules  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FinetuneGrid:
    """One harness grid: experiment, task, seed, backbone labels (relative to OUT), strategies."""

    experiment: str
    task: TaskPlan
    seed: int
    backbones: tuple[str, ...]
    strategies: tuple[str, ...]

    @property
    def relative_dir(self) -> Path:
        from matforge.finetune.bench_grid import slug

        return Path("finetune") / self.experiment / slug(self.task.name) / f"seed{self.seed}"

    @property
    def name(self) -> str:
        return f"finetune {self.experiment}/{self.task.name}/seed{self.seed}"


@contextlib.contextmanager
def inside(directory: Path) -> Iterator[None]:
    """Run the body with ``directory`` as the working directory, then return to the old one."""
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def grid_done(out: Path, grid: FinetuneGrid) -> bool:
    return (out / grid.relative_dir / COMPLETE).is_file()


def run_grid(out: Path, grid: FinetuneGrid, settings: FinetunePlan, data_root: Path | None) -> None:
    """Run (or resume) the grid with the harness; mark it complete when no cell failed."""
    from matforge.finetune.bench_results import write_json_atomic
    from matforge.finetune.harness import BenchSettings, run_bench

    bench_settings = BenchSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                                   patience=settings.patience, jobs=settings.jobs, data_root=data_root)
    sizes: list[int | None] = list(grid.task.sizes) if grid.task.sizes else [None]
    with inside(out):
        result = run_bench(backbones=list(grid.backbones), tasks=[grid.task.name], strategies=list(grid.strategies),
                           folds=grid.task.folds, train_sizes=sizes, seeds=[grid.seed], out=grid.relative_dir,
                           settings=bench_settings, runner=run_cell,
                           info={"experiment": grid.experiment, "command": "matforge bench science"})
    if result.failed == 0:
        write_json_atomic(out / grid.relative_dir / COMPLETE, {"cells": len(result.rows)})
