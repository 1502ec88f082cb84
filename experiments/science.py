"""``matforge bench science``: both experiments as one list of resumable stages (see the package doc).

:func:`build_stages` turns a plan into stages in the order they run: exp1's pre-training and export
per objective, exp2's datasets, pre-training and export per backbone, then one fine-tuning grid per
experiment × task × seed. :func:`run_science` checks the settings against ``OUT/plan.json``, runs
the stages (``only``, ``max_minutes``), shuts down the Ray instance the pre-trainings started, and
writes ``results.csv`` and the results page (``OUT/results.md``, or ``docs``) from what exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from matforge.experiments.corpus import Corpus
from matforge.experiments.finetuning import FinetuneGrid, grid_done, run_grid
from matforge.experiments.plan import CORPUS_ENERGY, PlanError, SciencePlan
from matforge.experiments.pretraining import (PretrainRun, export, export_done, pretrain,
                                              pretrain_done)
from matforge.experiments.stages import Stage, StageLog, run_stages


def exp1_runs(plan: SciencePlan, corpus: Corpus) -> list[PretrainRun]:
    return [PretrainRun("exp1", objective, objective, str(corpus.path), corpus.train_split, corpus.val_split,
                        plan.exp1.backbone, plan.pretrain,
                        denoise_equilibrium_only=plan.exp1.denoise_equilibrium_only)
            for objective in plan.exp1.objectives]


def exp2_datasets(plan: SciencePlan, out: Path) -> dict[str, tuple[tuple[str, ...], bool]]:
    """``{dataset name: (properties, combined)}`` of exp2."""
    sets = {"combined": (tuple(plan.exp2.properties), True)}
    for prop in plan.exp2.singles:
        sets[f"single-{prop}"] = ((prop,), False)
    return sets


def exp2_runs(plan: SciencePlan, out: Path) -> list[PretrainRun]:
    runs = []
    for name, (props, _) in exp2_datasets(plan, out).items():
        data = str(out / "data" / f"exp2-{name}")
        runs.append(PretrainRun("exp2", name, "combined", data, "train", "val", plan.exp2.backbone,
                                plan.exp2_pretrain, props))
        if name == "combined":
            runs.append(PretrainRun("exp2", "attention", "combined", data, "train", "val", plan.exp2.attention,
                                    plan.exp2_pretrain, props))
    return runs


def finetune_grids(plan: SciencePlan) -> list[FinetuneGrid]:
    grids = []
    labels1 = tuple(f"backbones/exp1-{o}" for o in plan.exp1.objectives) + ("none",)
    for task in plan.exp1.tasks:
        for seed in plan.exp1.seeds:
            grids.append(FinetuneGrid("exp1", task, seed, labels1, ("full",)))
    if plan.exp2.enabled:
        names = ["combined", "attention", *[f"single-{p}" for p in plan.exp2.singles]]
        labels2 = tuple(f"backbones/exp2-{n}" for n in names) + ("none", "none:backbones/exp2-attention")
        for task in plan.exp2.tasks:
            for seed in plan.exp2.seeds:
                grids.append(FinetuneGrid("exp2", task, seed, labels2, tuple(plan.exp2.strategies)))
    return grids


def _data_root(plan: SciencePlan) -> Path | None:
    from matforge.finetune.tasks import default_data_root

    return default_data_root(plan.data_root or None)


def build_stages(plan: SciencePlan, out: Path, corpus: Corpus) -> tuple[list[Stage], dict[str, str]]:
    """The stages of the plan and the equivalent ``matforge pretrain`` command of each run."""
    stages: list[Stage] = []
    commands: dict[str, str] = {}

    def add_run(run: PretrainRun) -> None:
        commands[run.label] = run.command(out)
        stages.append(Stage(f"pretrain {run.label}", "pretrain", lambda: pretrain_done(out, run),
                            lambda: pretrain(out, run)))
        stages.append(Stage(f"export {run.label}", "pretrain", lambda: export_done(out, run),
                            lambda: export(out, run)))

    for run in exp1_runs(plan, corpus):
        add_run(run)
    if plan.exp2.enabled:
        from matforge.experiments.property_data import build_property_dataset

        root = _data_root(plan)
        perov5 = (root / plan.exp2.perov5) if root else Path(plan.exp2.perov5)
        for name, (props, combined) in exp2_datasets(plan, out).items():
            target = out / "data" / f"exp2-{name}"

            def make(target: Path = target, props: tuple[str, ...] = props, combined: bool = combined) -> None:
                build_property_dataset(target, perov5_path=perov5, corpus_path=corpus.path,
                                       corpus_split=corpus.train_split, properties=props,
                                       structures=plan.exp2.structures, combined=combined, seed=plan.exp2_pretrain.seed)

            stages.append(Stage(f"data exp2-{name}", "pretrain",
                                lambda target=target: (target / "splits" / "split.json").is_file(), make))
        for run in exp2_runs(plan, out):
            add_run(run)
    root = _data_root(plan)
    for grid in finetune_grids(plan):
        def fine(grid: FinetuneGrid = grid) -> None:
            missing = [b for b in grid.backbones if b.startswith(("backbones/", "none:backbones/"))
                       and not (out / b.split(":")[-1] / "card.json").is_file()]
            if missing:
                raise PlanError(f"{grid.name}: backbones not exported yet: {missing}; run --only pretrain first")
            run_grid(out, grid, plan.finetune, root)

        stages.append(Stage(grid.name, "finetune", lambda grid=grid: grid_done(out, grid), fine))
    return stages, commands


@dataclass
class ScienceResult:
    log: StageLog
    page: Path | None
    results_csv: Path


def run_science(plan: SciencePlan, out: str | Path, *, only: str | None = None, max_minutes: float | None = None,
                docs: str | Path | None = None, command: str = "", progress=print) -> ScienceResult:
    """Run what is not done of ``plan`` in ``out`` and write the report (see the module docstring)."""
    from matforge.experiments.corpus import corpus_dir, describe, ensure_corpus
    from matforge.experiments.leakage_hook import leakage_overlap
    from matforge.experiments.plan import plan_to_dict
    from matforge.experiments.report import write_results_page
    from matforge.experiments.state import record_settings
    from matforge.finetune.bench_results import write_json_atomic
    from matforge.training.docs_tables import machine_description, today

    started = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = started + 60.0 * max_minutes if max_minutes is not None else None
    existing = (corpus_dir(plan, out) / "manifest.json").is_file()
    record_settings(out, plan_to_dict(plan), describe(corpus_dir(plan, out)).manifest_sha256 if existing else None)
    log = StageLog()
    if only != "report":
        corpus = ensure_corpus(plan, out)
        record_settings(out, plan_to_dict(plan), corpus.manifest_sha256)
        write_json_atomic(out / "corpus.json", corpus.description)
        stages, commands = build_stages(plan, out, corpus)
        write_json_atomic(out / "commands.json", commands)
        from matforge.experiments.pretraining import shutdown_ray

        try:
            log = run_stages(stages, only=only, deadline=deadline, progress=progress)
        finally:
            shutdown_ray()
    page = None
    if only in (None, "report"):
        if existing or only is None:
            tasks = sorted({t.name for t in plan.exp1.tasks + plan.exp2.tasks})
            leakage_overlap(out, corpus_dir(plan, out), tasks)
        _add_session(out, command, time.monotonic() - started, len(log.ran), machine_description(), today())
        page = write_results_page(out, Path(docs).resolve() if docs else out / "results.md")
    else:
        _add_session(out, command, time.monotonic() - started, len(log.ran), machine_description(), today())
    return ScienceResult(log, page, out / "results.csv")


def _add_session(out: Path, command: str, wall: float, ran: int, machine: str, date: str) -> None:
    from matforge.finetune.bench_results import write_json_atomic

    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append({"command": command, "wall_s": wall, "ran": ran, "machine": machine, "date": date})
    write_json_atomic(path, sessions)


__all__ = ["run_science", "build_stages", "finetune_grids", "exp1_runs", "exp2_runs", "ScienceResult",
           "CORPUS_ENERGY"]
